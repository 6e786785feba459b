//! Data preparation: the BPE tokenizer and the token shards of a run directory, made when
//! missing (the corpus streamed, encoded on every core) and checked against the vocabulary.

use super::VAL_EVERY;
use crate::data::{
    clear_unfinished, encode_stream, find_sources, tinyshakespeare, LazyTokenizer, Sample, ShardWriter, Source,
    StreamOptions, StreamStats, TokenDataset, TokenIndex, Tokenizer, SHARD_TOKENS,
};
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Text the tokenizer trains on unless `--tokenizer-sample-bytes` says otherwise.
pub const TOKENIZER_SAMPLE_BYTES: u64 = 256 << 20;

/// A run directory's data: the tokenizer, both splits, and characters per token of validation.
pub struct Prepared {
    pub tokenizer: LazyTokenizer,
    pub train: TokenDataset,
    pub val: TokenDataset,
    pub chars_per_token: f64,
}

/// How `prepare_data` makes what is missing.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Tokens of a tokenizer trained on the data.
    pub vocab: usize,
    /// Bytes of the corpus the tokenizer trains on, drawn across all of it.
    pub tokenizer_sample_bytes: u64,
    /// Tokens per shard file.
    pub shard_tokens: u64,
    /// How the corpus is cut and split, and on how many threads it is encoded.
    pub stream: StreamOptions,
}

impl DataOptions {
    pub fn new(vocab: usize) -> DataOptions {
        DataOptions {
            vocab,
            tokenizer_sample_bytes: TOKENIZER_SAMPLE_BYTES,
            shard_tokens: SHARD_TOKENS,
            stream: StreamOptions { val_every: VAL_EVERY as u64, ..Default::default() },
        }
    }
}

/// `--data` as given, or TinyShakespeare (downloaded once into data/).
fn data_spec(data: Option<&Path>) -> Result<PathBuf> {
    match data {
        Some(p) => Ok(p.to_path_buf()),
        None => tinyshakespeare("data"),
    }
}

/// Tokenizer (`vocab` tokens) and token files in `out`, made from the text when missing: every
/// 10th document validates. Windows are `seq_len` tokens.
pub fn prepare(data: Option<&Path>, vocab: usize, out: &Path, seq_len: usize) -> Result<Prepared> {
    prepare_data(data, &DataOptions::new(vocab), out, seq_len, None)
}

/// `prepare`, with the tokenizer `given` (a pretrained model's, `--init`) instead of one trained
/// on the text: written to `out` when missing, and an error if `out` holds another.
pub fn prepare_with(
    data: Option<&Path>,
    vocab: usize,
    out: &Path,
    seq_len: usize,
    given: Option<&Tokenizer>,
) -> Result<Prepared> {
    prepare_data(data, &DataOptions::new(vocab), out, seq_len, given)
}

/// `prepare_with` and its options: `data` is a file, a directory or a glob of .txt and .jsonl.
pub fn prepare_data(
    data: Option<&Path>,
    o: &DataOptions,
    out: &Path,
    seq_len: usize,
    given: Option<&Tokenizer>,
) -> Result<Prepared> {
    std::fs::create_dir_all(out)?;
    let tok_path = out.join("tokenizer.json");
    let mut sources: Option<(PathBuf, Vec<Source>)> = None;
    let mut corpus = || -> Result<(PathBuf, Vec<Source>)> {
        if sources.is_none() {
            let spec = data_spec(data)?;
            let found = find_sources(&spec)?;
            sources = Some((spec, found));
        }
        Ok(sources.clone().expect("just found"))
    };
    let mut fresh = false;
    let mut tok = if let Some(given) = given {
        if !tok_path.exists() {
            given.save(&tok_path)?;
            fresh = true;
            note!("tokenizer: the --init model's ({} tokens) -> {}", given.vocab_size(), tok_path.display());
        } else if Tokenizer::load(&tok_path)?.inner().get_vocab(true) != given.inner().get_vocab(true) {
            return Err(Error::Invalid(format!(
                "{} is not the --init model's tokenizer: this run directory was made for another model; use a new --out",
                tok_path.display()
            )));
        }
        LazyTokenizer::from(given.clone())
    } else if tok_path.exists() {
        Tokenizer::load_lazily(&tok_path)?
    } else {
        let (spec, sources) = corpus()?;
        fresh = true;
        LazyTokenizer::from(train_tokenizer(&spec, &sources, o, &tok_path)?)
    };
    if fresh {
        // Token files of another tokenizer are stale.
        let _ = std::fs::remove_file(out.join(crate::data::INDEX_FILE));
    }
    let old = (out.join("train.bin"), out.join("val.bin"));
    let index = match TokenIndex::read(out)? {
        Some(index) => Some(index),
        None if !fresh && old.0.exists() && old.1.exists() => None, // made by an earlier version
        None => {
            let (spec, sources) = corpus()?;
            Some(make_tokens(&spec, &sources, tok.get()?, out, o)?)
        }
    };
    // Ids the model's embedding does not have are caught here, not by a kernel mid-run.
    let vocab = tok.vocab_size();
    let (train, val, chars_per_token) = match &index {
        Some(i) => {
            let open = |s| TokenDataset::open_shards(&TokenIndex::paths(out, s), seq_len)?.checked(vocab);
            let (train, val) = (open(&i.train)?, open(&i.val)?);
            let cpt = i.val_chars as f64 / val.len() as f64;
            note!(
                "data: {} ({} files, {:.1} MB, {} documents): {} train / {} validation tokens in {} + {} shards; \
                 validation: {}; {cpt:.2} characters per token",
                i.data,
                i.files,
                i.bytes as f64 / 1e6,
                i.documents,
                train.len(),
                val.len(),
                i.train.len(),
                i.val.len(),
                i.validation
            );
            (train, val, cpt)
        }
        None => {
            let (train, val) = (
                TokenDataset::open_checked(&old.0, seq_len, vocab)?,
                TokenDataset::open_checked(&old.1, seq_len, vocab)?,
            );
            note!(
                "data: {} and {} (made by an earlier version: the last 10% of the text validates; delete them to tokenize again), {} train / {} validation tokens",
                old.0.display(),
                old.1.display(),
                train.len(),
                val.len()
            );
            // Those files split the text 90/10 by characters; count the tail's characters.
            let cpt = match data_spec(data).ok().and_then(|p| std::fs::read_to_string(p).ok()) {
                Some(text) => text.chars().count().div_ceil(10) as f64 / val.len() as f64,
                None => f64::NAN,
            };
            (train, val, cpt)
        }
    };
    Ok(Prepared { tokenizer: tok, train, val, chars_per_token })
}

/// Trains the BPE tokenizer on a sample of the corpus and saves it to `path`.
fn train_tokenizer(spec: &Path, sources: &[Source], o: &DataOptions, path: &Path) -> Result<Tokenizer> {
    let t = Instant::now();
    let total: u64 = sources.iter().map(|s| s.bytes).sum();
    let sample = Sample::new(sources, o.tokenizer_sample_bytes);
    let (error, taken) = (sample.error_slot(), sample.taken.clone());
    let what = match total > o.tokenizer_sample_bytes {
        true => format!(
            "a sample of about {:.0} MB spread across the {:.0} MB of {} (--tokenizer-sample-bytes)",
            o.tokenizer_sample_bytes as f64 / 1e6,
            total as f64 / 1e6,
            spec.display()
        ),
        false => format!("all of {} ({:.1} MB)", spec.display(), total as f64 / 1e6),
    };
    note!("training a {}-token BPE tokenizer on {what} ...", o.vocab);
    let tok = Tokenizer::train_stream(sample, o.vocab);
    if let Some(e) = error.lock().expect("not poisoned").take() {
        return Err(e);
    }
    let tok = tok?;
    tok.save(path)?;
    note!(
        "trained a {}-token BPE tokenizer on {:.1} MB of text in {:.1}s -> {}",
        tok.vocab_size(),
        *taken.lock().expect("not poisoned") as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(tok)
}

/// Encodes the corpus into shards in `out` and writes their index last, with a progress bar.
fn make_tokens(spec: &Path, sources: &[Source], tok: &Tokenizer, out: &Path, o: &DataOptions) -> Result<TokenIndex> {
    let removed = clear_unfinished(out)?;
    if removed > 0 {
        note!("removed {removed} token files of an unfinished tokenization in {}: starting again", out.display());
    }
    let t = Instant::now();
    let total: u64 = sources.iter().map(|s| s.bytes).sum();
    let vocab = tok.vocab_size();
    let mut train = ShardWriter::new(out, "train", o.shard_tokens, vocab);
    let mut val = ShardWriter::new(out, "val", o.shard_tokens, vocab);
    let bar = if super::quiet() { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template(
            "encoding {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg} [{elapsed} < {eta}]",
        )
        .expect("valid template"),
    );
    let mut last_note = Instant::now();
    let mut progress = |s: &StreamStats| {
        let tokens = s.train_tokens + s.val_tokens;
        bar.set_position(s.bytes);
        bar.set_message(format!("{:.1}M tokens", tokens as f64 / 1e6));
        // Without a terminal (a log file) the bar is hidden: a line every 30 s instead.
        if bar.is_hidden() && !super::quiet() && last_note.elapsed().as_secs() >= 30 {
            last_note = Instant::now();
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "encoding: {:.0}/{:.0} MB, {:.1} MB/s, {:.1}M tokens, {:.0}s left",
                s.bytes as f64 / 1e6,
                total as f64 / 1e6,
                s.bytes as f64 / 1e6 / secs,
                tokens as f64 / 1e6,
                (total - s.bytes.min(total)) as f64 * secs / s.bytes.max(1) as f64
            );
        }
    };
    let so = StreamOptions { cut_documents: tok.byte_level(), ..o.stream.clone() };
    let encode = |text: &str| tok.encode(text);
    let mut sink = |t: &[u32], v: &[u32]| -> Result<()> {
        train.push(t)?;
        val.push(v)
    };
    let stats = encode_stream(sources, &so, &encode, tok.eos_id(), &mut sink, &mut progress)?;
    bar.finish_and_clear();
    let tokens = stats.train_tokens + stats.val_tokens;
    let (validation, val_chars) = if stats.val_tokens > 0 {
        let v = format!("every {}th document ({} of {})", so.val_every, stats.val_documents, stats.documents);
        (v, stats.val_chars)
    } else {
        // Too few documents for every Nth: the tail of the text validates.
        let n = train.move_tail(stats.train_tokens / 10, &mut val)?;
        let v = format!("the last {n} tokens (fewer than {} documents)", so.val_every);
        (v, (stats.chars as f64 * n as f64 / tokens.max(1) as f64).round() as u64)
    };
    let secs = t.elapsed().as_secs_f64();
    note!(
        "encoded {:.1} MB into {:.1}M tokens in {secs:.1}s ({:.1} MB/s on {} threads)",
        total as f64 / 1e6,
        tokens as f64 / 1e6,
        total as f64 / 1e6 / secs,
        so.threads
    );
    let mut index = TokenIndex::new(spec.display().to_string());
    (index.files, index.bytes, index.documents) = (sources.len() as u64, total, stats.documents);
    (index.validation, index.val_chars, index.vocab_size) = (validation, val_chars, vocab);
    index.train = train.finish()?;
    index.val = val.finish()?;
    if index.train.is_empty() || index.val.is_empty() {
        return Err(Error::Invalid(format!("--data {}: no text to train on ({tokens} tokens)", spec.display())));
    }
    index.write(out)?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("irontensor-prepare-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// 43 documents of 1 to 4 lines, blank lines between them (two after some), with multi-byte characters.
    fn docs() -> Vec<String> {
        (0..43)
            .map(|i| (0..1 + i % 4).map(|l| format!("line {i}.{l}: to be, or not — é{}\n", i % 7)).collect())
            .collect()
    }

    fn text() -> String {
        docs()
            .iter()
            .enumerate()
            .map(|(i, d)| if i % 5 == 2 { format!("{d}\n \n") } else { format!("{d}\n") })
            .collect()
    }

    #[test]
    fn makes_the_tokenizer_and_token_files_once() {
        let dir = scratch("once");
        let data = dir.join("in.txt");
        std::fs::write(&data, text()).unwrap();
        let out = dir.join("run");
        let mut p = prepare(Some(&data), 300, &out, 8).unwrap();
        let tok = p.tokenizer.get().unwrap();
        assert!(tok.vocab_size() <= 300);
        // Every 10th document validates; each document ends with <|endoftext|>.
        let (mut train, mut val, mut val_chars) = (Vec::new(), Vec::new(), 0);
        for (i, d) in docs().iter().enumerate() {
            let ids = if i % 10 == 9 { &mut val } else { &mut train };
            ids.extend(tok.encode(d));
            ids.push(tok.eos_id());
            val_chars += if i % 10 == 9 { d.chars().count() } else { 0 };
        }
        assert_eq!(p.train.tokens(0, p.train.len()), train);
        assert_eq!(p.val.tokens(0, p.val.len()), val);
        assert_eq!(p.chars_per_token, val_chars as f64 / val.len() as f64);
        // A second call reuses the files: they are not rewritten.
        let shard = out.join("train-00000.bin");
        let before = std::fs::metadata(&shard).unwrap().modified().unwrap();
        let tok_json = std::fs::read(out.join("tokenizer.json")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        prepare(Some(&data), 999, &out, 8).unwrap();
        assert_eq!(std::fs::metadata(&shard).unwrap().modified().unwrap(), before);
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), tok_json);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A run directory of an earlier version (train.bin, val.bin, no tokens.json) still opens.
    #[test]
    fn an_earlier_run_directory_still_opens() {
        let dir = scratch("old");
        let data = dir.join("in.txt");
        std::fs::write(&data, text()).unwrap();
        let out = dir.join("run");
        let vocab = prepare(Some(&data), 300, &out, 8).unwrap().tokenizer.vocab_size();
        std::fs::remove_file(out.join(crate::data::INDEX_FILE)).unwrap();
        let ids: Vec<u32> = (0..100).map(|i| (i * 7 % vocab) as u32).collect();
        TokenDataset::create(out.join("train.bin"), &ids).unwrap();
        TokenDataset::create(out.join("val.bin"), &ids[..30]).unwrap();
        let p = prepare(Some(&data), 300, &out, 8).unwrap();
        assert_eq!((p.train.tokens(0, 100), p.val.len()), (ids, 30));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_data_file_names_the_flag() {
        let dir = scratch("missing");
        let e = prepare(Some(&dir.join("nope.txt")), 300, &dir.join("run"), 8).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("--data") && e.to_string().contains("nope.txt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_file_with_ids_outside_the_vocabulary_is_refused() {
        let dir = scratch("vocab");
        let data = dir.join("in.txt");
        std::fs::write(&data, text()).unwrap();
        let out = dir.join("run");
        let vocab = prepare(Some(&data), 300, &out, 8).unwrap().tokenizer.vocab_size();
        let mut ids = vec![1u32; 50];
        ids[17] = vocab as u32;
        TokenDataset::create(out.join("train-00000.bin"), &ids).unwrap();
        let mut index = crate::data::TokenIndex::read(&out).unwrap().unwrap();
        index.train[0].tokens = 50;
        index.write(&out).unwrap();
        let e = prepare(Some(&data), 300, &out, 8).map(|_| ()).unwrap_err().to_string();
        assert!(
            e.contains("train-00000.bin") && e.contains("position 17") && e.contains(&format!("id {vocab}")),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
