//! Byte-level BPE (GPT-2 style) on Hugging Face `tokenizers`, saved as a standard tokenizer.json.

use super::fast_encode::FastEncoder;
use crate::fs::write_atomic;
use crate::{bail, Error, Result};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// The end-of-text token, placed between documents.
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// Text every loaded tokenizer must reproduce exactly (catches a tokenizer that is not byte-level).
const PROBE: &str = "Hello, wörld! 日本語 🦀\n\ttabs  and\r\n\u{0}nul <|endoftext|>";

/// A byte-level BPE tokenizer: every UTF-8 string encodes, and decodes back to itself.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: u32,
    /// Our own encoding of the same ids, where the tokenizer is of the kind it reproduces.
    fast: Option<Arc<FastEncoder>>,
}

fn tk_err(what: String) -> impl FnOnce(tokenizers::Error) -> Error {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

impl Tokenizer {
    /// Trains a byte-level BPE with `vocab_size` entries (256 bytes + merges + `<|endoftext|>`) on `text`.
    pub fn train(text: &str, vocab_size: usize) -> Result<Tokenizer> {
        Self::train_texts(&[text], vocab_size)
    }

    /// Trains on the contents of several UTF-8 text files.
    pub fn train_files<P: AsRef<Path>>(paths: &[P], vocab_size: usize) -> Result<Tokenizer> {
        let texts = paths
            .iter()
            .map(|p| {
                let p = p.as_ref();
                std::fs::read_to_string(p)
                    .map_err(|e| Error::Invalid(format!("tokenizer: cannot read training text {}: {e}", p.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::train_texts(&texts, vocab_size)
    }

    fn train_texts<S: AsRef<str> + Sync>(texts: &[S], vocab_size: usize) -> Result<Tokenizer> {
        // Lines keep their '\n', so the words counted are those of the whole text, and the trainer
        // pre-tokenizes them in parallel.
        Self::train_stream(texts.iter().flat_map(|t| t.as_ref().split_inclusive('\n')), vocab_size)
    }

    /// Trains on `texts` (lines, documents) as the iterator yields them: memory holds the word
    /// counts, not the text.
    pub fn train_stream<I, S>(texts: I, vocab_size: usize) -> Result<Tokenizer>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < 257 {
            bail!(Invalid, "tokenizer: vocab_size {vocab_size} is too small (256 byte tokens + {EOS_TOKEN} need 257)");
        }
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_post_processor(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        inner.train(&mut trainer, texts).map_err(tk_err("tokenizer: training failed".into()))?;
        Self::wrap(inner, "the trained tokenizer")
    }

    /// Checks that `inner` has the end-of-text token and round-trips text, as byte-level BPE does.
    pub(crate) fn wrap(inner: tokenizers::Tokenizer, what: &str) -> Result<Tokenizer> {
        Self::wrap_with_eos(inner, what, EOS_TOKEN)
    }

    /// `wrap`, with `eos` as the end-of-text token.
    fn wrap_with_eos(inner: tokenizers::Tokenizer, what: &str, eos: &str) -> Result<Tokenizer> {
        let Some(eos_id) = inner.token_to_id(eos) else {
            bail!(Invalid, "{what} has no {eos} token");
        };
        let probe_err = |e: tokenizers::Error| Error::Invalid(format!("{what} cannot encode text: {e}"));
        let ids = inner.encode(PROBE, false).map_err(probe_err)?;
        let back = inner.decode(ids.get_ids(), false).map_err(probe_err)?;
        if back != PROBE {
            bail!(Invalid, "{what} does not decode text back to itself (not a byte-level BPE?): {PROBE:?} -> {back:?}");
        }
        let fast = FastEncoder::new(&inner).filter(|f| f.encode(PROBE, inner.get_model()) == ids.get_ids());
        Ok(Tokenizer { inner, eos_id, fast: fast.map(Arc::new) })
    }

    /// Writes tokenizer.json (the Hugging Face format) atomically. A pretrained model's end-of-text
    /// token other than `<|endoftext|>` goes into the tokenizer_config.json beside it, so `load`
    /// finds it again.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json =
            self.inner.to_string(true).map_err(tk_err(format!("tokenizer: cannot serialize {}", path.display())))?;
        fn write_err(p: &Path) -> impl FnOnce(Error) -> Error + '_ {
            move |e| Error::Invalid(format!("tokenizer: cannot write {}: {e}", p.display()))
        }
        write_atomic(path, json.as_bytes()).map_err(write_err(path))?;
        let eos = self.inner.id_to_token(self.eos_id).unwrap_or_default();
        if eos != EOS_TOKEN {
            let config = path.with_file_name("tokenizer_config.json");
            let mut v = std::fs::read(&config)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .filter(|v| v.is_object())
                .unwrap_or_else(|| serde_json::json!({}));
            v["eos_token"] = eos.into();
            let text = serde_json::to_vec_pretty(&v).expect("JSON serialises");
            write_atomic(&config, &text).map_err(write_err(&config))?;
        }
        Ok(())
    }

    /// Reads a tokenizer.json written by `save`, or any byte-level BPE (GPT-2, Llama 3, SmolLM2,
    /// Qwen2): its end-of-text token is `<|endoftext|>`, else the `eos_token` of the
    /// tokenizer_config.json beside it (a downloaded model's).
    pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(tk_err(format!("tokenizer: cannot load {} (missing or not a tokenizer.json?)", path.display())))?;
        let what = format!("tokenizer {}", path.display());
        if inner.token_to_id(EOS_TOKEN).is_some() {
            return Self::wrap(inner, &what);
        }
        let config = path.with_file_name("tokenizer_config.json");
        let eos = std::fs::read(&config)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("eos_token").cloned())
            .and_then(|e| e.as_str().or_else(|| e.get("content").and_then(|c| c.as_str())).map(String::from));
        match eos {
            Some(eos) => Self::wrap_with_eos(inner, &what, &eos),
            None => bail!(Invalid, "{what} has no {EOS_TOKEN} token, and no eos_token in {}", config.display()),
        }
    }

    /// `load` on another thread: a run needs only the vocabulary size before its first step,
    /// and that is read from the file in a few ms, while building the tokenizer takes tens.
    pub fn load_lazily(path: impl AsRef<Path>) -> Result<LazyTokenizer> {
        let path = path.as_ref().to_path_buf();
        let Some(vocab_size) = Tokenizer::vocab_size_of(&path) else {
            return Ok(Tokenizer::load(path)?.into());
        };
        Ok(LazyTokenizer { vocab_size, loading: Some(std::thread::spawn(move || Tokenizer::load(path))), built: None })
    }

    /// What `load(path)?.vocab_size()` gives, read without building the tokenizer: a few ms
    /// instead of tens. None where the file is not a BPE tokenizer.json (then `load` tells why).
    pub fn vocab_size_of(path: impl AsRef<Path>) -> Option<usize> {
        use serde::de::IgnoredAny;
        #[derive(serde::Deserialize)]
        struct Added {
            content: String,
        }
        #[derive(serde::Deserialize)]
        struct Model {
            #[serde(rename = "type")]
            kind: String,
            vocab: HashMap<String, IgnoredAny>,
        }
        #[derive(serde::Deserialize)]
        struct File {
            added_tokens: Vec<Added>,
            model: Model,
        }
        let f: File = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        // As tokenizers counts: the model's vocabulary, plus added tokens that are not in it.
        let added: HashSet<&str> = f.added_tokens.iter().map(|a| a.content.as_str()).collect();
        let added = added.iter().filter(|a| !f.model.vocab.contains_key(**a)).count();
        (f.model.kind == "BPE").then_some(f.model.vocab.len() + added)
    }

    /// Token ids of `text`; special-token text such as `<|endoftext|>` becomes its id.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if let Some(fast) = &self.fast {
            return fast.encode(text, self.inner.get_model());
        }
        self.encode_reference(text)
    }

    /// Whether `encode` runs our faster encoder (GPT-2 style byte-level BPE) rather than `tokenizers`'.
    pub fn fast_encoding(&self) -> bool {
        self.fast.is_some()
    }

    /// `encode` by `tokenizers` itself, whatever the tokenizer (the reference `encode` matches).
    pub fn encode_reference(&self, text: &str) -> Vec<u32> {
        // A byte-level BPE (checked in `wrap`) has a token for every byte, so encoding cannot fail.
        let enc = self.inner.encode_fast(text, false).expect("byte-level BPE encodes any text");
        enc.get_ids().to_vec()
    }

    /// `encode` of a long text, in pieces of about `chunk_bytes` encoded on every core: each
    /// piece ends after a newline that a non-space character follows, where byte-level BPE's
    /// pre-tokenizer always splits, so the ids equal `encode(text)`'s. Memory is that of one
    /// piece per core (encoding 50 MB at once took gigabytes), plus the ids.
    /// A tokenizer without a byte-level pre-tokenizer (SentencePiece style, where a piece's start
    /// would gain a "▁") encodes the text whole.
    pub fn encode_chunked(&self, text: &str, chunk_bytes: usize) -> Vec<u32> {
        use rayon::prelude::*;
        if !self.byte_level() {
            return self.encode(text);
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while rest.len() > chunk_bytes {
            let cut = rest.as_bytes()[chunk_bytes..]
                .windows(2)
                .position(|w| w[0] == b'\n' && !w[1].is_ascii_whitespace())
                .map(|i| chunk_bytes + i + 1);
            let Some(cut) = cut else { break };
            let (piece, tail) = rest.split_at(cut);
            pieces.push(piece);
            rest = tail;
        }
        pieces.push(rest);
        pieces.par_iter().map(|p| self.encode(p)).collect::<Vec<_>>().concat()
    }

    /// Whether the pre-tokenizer is byte-level (alone or in a sequence, as Llama 3's and Qwen2's).
    pub(crate) fn byte_level(&self) -> bool {
        let pre = self.inner.get_pre_tokenizer();
        pre.and_then(|p| serde_json::to_string(p).ok()).is_some_and(|j| j.contains("\"ByteLevel\""))
    }

    /// Text of `ids`; ids outside the vocabulary are skipped, bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, false).expect("byte-level decoding cannot fail")
    }

    /// Vocabulary size including special tokens: model embeddings need at least this many rows.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `<|endoftext|>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The underlying Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// A tokenizer that may still be loading (`Tokenizer::load_lazily`).
pub struct LazyTokenizer {
    vocab_size: usize,
    loading: Option<std::thread::JoinHandle<Result<Tokenizer>>>,
    built: Option<Tokenizer>,
}

impl From<Tokenizer> for LazyTokenizer {
    fn from(tok: Tokenizer) -> LazyTokenizer {
        LazyTokenizer { vocab_size: tok.vocab_size(), loading: None, built: Some(tok) }
    }
}

impl LazyTokenizer {
    /// Known at once.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The tokenizer, waiting for it if it is still loading; errors in the file show here.
    pub fn get(&mut self) -> Result<&Tokenizer> {
        if let Some(loading) = self.loading.take() {
            let tok =
                loading.join().map_err(|_| Error::Invalid("tokenizer: the thread loading it panicked".into()))??;
            if tok.vocab_size() != self.vocab_size {
                let (n, m) = (tok.vocab_size(), self.vocab_size);
                bail!(Invalid, "tokenizer: {n} tokens once loaded, but {m} read ahead from the file");
            }
            self.built = Some(tok);
        }
        Ok(self.built.as_ref().expect("a tokenizer loaded or loading"))
    }
}

impl std::fmt::Debug for LazyTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("loaded", &self.built.is_some())
            .finish()
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab_size", &self.vocab_size()).field("eos_id", &self.eos_id).finish()
    }
}
