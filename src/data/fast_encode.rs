//! A faster encoder for GPT-2 style byte-level BPE (ours): the same ids as `tokenizers`, from a
//! DFA regex instead of a backtracking one and a per-thread cache of whole words' ids.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use tokenizers::models::bpe::BPE;
use tokenizers::models::ModelWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Model;

/// GPT-2's split, less its `\s+(?!\S)` (the `regex` crate has no lookahead): `pieces` gives
/// a whitespace run followed by a non-space its last character back, as the lookahead would.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
/// Words cached per thread before the cache starts over (bounded memory).
const CACHE_WORDS: usize = 1 << 19;

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

type WordCache = HashMap<String, Vec<u32>, BuildHasherDefault<WordHasher>>;

thread_local! {
    /// (encoder id, word -> ids): a thread's cache, for the encoder that used it last.
    static CACHE: RefCell<(u64, WordCache)> = RefCell::new((u64::MAX, WordCache::default()));
}

/// A multiply-rotate hash (as rustc's FxHash): words are short, and SipHash's cost showed in profiles.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        self.add(u64::from_le_bytes(tail) ^ bytes.len() as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Encodes as `tokenizers` does for a tokenizer of: no normalizer, the ByteLevel pre-tokenizer
/// alone (its GPT-2 regex, no prefix space), a deterministic BPE, and added tokens that strip nothing.
#[derive(Debug)]
pub(crate) struct FastEncoder {
    id: u64,
    regex: regex::Regex,
    /// The byte-level alphabet: byte b is written as char `chars[b]`.
    chars: [char; 256],
    /// Added tokens' text and ids, longest first (matched before the split, as `tokenizers` does).
    added: Vec<(String, u32)>,
}

impl FastEncoder {
    /// An encoder for `tok`, or None where it is not of the kind this one reproduces.
    pub(crate) fn new(tok: &tokenizers::Tokenizer) -> Option<FastEncoder> {
        let ModelWrapper::BPE(bpe) = tok.get_model() else { return None };
        let byte_level = matches!(tok.get_pre_tokenizer(), Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space && b.use_regex);
        let deterministic = bpe.dropout.is_none_or(|p| p == 0.0);
        if tok.get_normalizer().is_some() || !byte_level || !deterministic {
            return None;
        }
        let decoder = tok.get_added_tokens_decoder();
        if decoder.len() > 8 || decoder.values().any(|t| t.lstrip || t.rstrip || t.single_word) {
            return None;
        }
        let mut added: Vec<(String, u32)> = decoder.into_iter().map(|(id, t)| (t.content, id)).collect();
        added.sort_by_key(|(text, id)| (std::cmp::Reverse(text.len()), *id));
        let regex = regex::Regex::new(PATTERN).expect("a valid pattern");
        Some(FastEncoder { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), regex, chars: byte_chars(), added })
    }

    /// The ids of `text`, with `bpe` the tokenizer's model.
    pub(crate) fn encode(&self, text: &str, model: &ModelWrapper) -> Vec<u32> {
        let ModelWrapper::BPE(bpe) = model else { unreachable!("checked in new") };
        let mut ids = Vec::with_capacity(text.len() / 3);
        CACHE.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.0 != self.id {
                *cell = (self.id, WordCache::default());
            }
            let cache = &mut cell.1;
            let mut rest = text;
            // Text between added tokens is split on its own, as `tokenizers` does.
            while !rest.is_empty() {
                let next = self.added.iter().filter_map(|(t, id)| rest.find(t.as_str()).map(|at| (at, t.len(), *id)));
                let hit = next.min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
                let (plain, after) = match hit {
                    Some((at, len, id)) => (&rest[..at], Some((id, &rest[at + len..]))),
                    None => (rest, None),
                };
                self.encode_plain(plain, bpe, cache, &mut ids);
                match after {
                    Some((id, tail)) => {
                        ids.push(id);
                        rest = tail;
                    }
                    None => break,
                }
            }
        });
        ids
    }

    /// Encodes text without added tokens, word by word through the cache.
    fn encode_plain(&self, text: &str, bpe: &BPE, cache: &mut WordCache, ids: &mut Vec<u32>) {
        let mut at = 0;
        let mut mapped = String::new();
        while let Some(m) = self.regex.find_at(text, at) {
            let mut end = m.end();
            let word = m.as_str();
            // `\s+(?!\S)`: a whitespace run before a non-space leaves its last character to it.
            if end < text.len() && word.chars().all(char::is_whitespace) {
                let last = word.chars().next_back().expect("a match is not empty");
                if word.len() > last.len_utf8() {
                    end -= last.len_utf8();
                }
            }
            let word = &text[m.start()..end];
            at = end;
            if let Some(hit) = cache.get(word) {
                ids.extend_from_slice(hit);
                continue;
            }
            mapped.clear();
            mapped.extend(word.bytes().map(|b| self.chars[b as usize]));
            let word_ids: Vec<u32> = match bpe.tokenize(&mapped) {
                Ok(tokens) => tokens.iter().map(|t| t.id).collect(),
                // Not reached for a byte-level vocabulary; `tokenizers` would fail the same way.
                Err(_) => Vec::new(),
            };
            ids.extend_from_slice(&word_ids);
            if cache.len() >= CACHE_WORDS {
                cache.clear();
            }
            cache.insert(word.to_string(), word_ids);
        }
    }
}

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the other 68 for
/// the characters from U+0100 up, in byte order.
fn byte_chars() -> [char; 256] {
    let mut chars = ['\0'; 256];
    let mut next = 256u32;
    for (b, c) in chars.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        *c = if printable {
            char::from(b as u8)
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below U+0200")
        };
    }
    chars
}
