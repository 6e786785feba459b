//! The `tokenizer.ggml.*` keys of a byte-level BPE (llama.cpp's `gpt2` model), written and read.

use super::format::{GgufFile, Value};
use crate::data::Tokenizer;
use crate::{Error, Result};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const UNUSED: i32 = 5;

/// The tokenizer keys for `tok`, padded with unused tokens up to the model's `vocab_size`
/// (llama.cpp wants one token per embedding row).
pub fn metadata(tok: &Tokenizer, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let inner = tok.inner();
    let json = inner.to_string(false).map_err(|e| Error::Invalid(format!("gguf export: tokenizer: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| Error::Invalid(format!("gguf export: tokenizer json: {e}")))?;
    if json["model"]["type"] != "BPE" {
        return Err(Error::Invalid("gguf export: the tokenizer is not a BPE".into()));
    }
    // tokenizer.json spells a merge as "a b" or as ["a", "b"].
    let merges = json["model"]["merges"].as_array().cloned().unwrap_or_default();
    let merges = merges
        .iter()
        .map(|m| match (m.as_str(), m.as_array()) {
            (Some(s), _) => Some(s.to_string()),
            (_, Some(p)) if p.len() == 2 => Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Invalid("gguf export: the tokenizer's merges are not pairs of strings".into()))?;
    let n = tok.vocab_size();
    if n > vocab_size {
        return Err(Error::Invalid(format!(
            "gguf export: the tokenizer has {n} tokens but the model only {vocab_size} embedding rows"
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    for (t, id) in inner.get_vocab(true) {
        tokens[id as usize] = Some(t);
    }
    let special = inner.get_added_tokens_decoder();
    let types: Vec<Value> = (0..vocab_size)
        .map(|id| {
            let ty = match (&tokens[id], special.get(&(id as u32))) {
                (None, _) => UNUSED,
                (Some(_), Some(a)) if a.special => CONTROL,
                _ => NORMAL,
            };
            Value::I32(ty)
        })
        .collect();
    let tokens = tokens.into_iter().enumerate().map(|(id, t)| Value::Str(t.unwrap_or_else(|| format!("[PAD{id}]"))));
    let s = |v: &str| Value::Str(v.into());
    let eos = Value::U32(tok.eos_id());
    Ok(vec![
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("gpt-2")),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(merges.iter().map(|m| s(m)).collect())),
        ("tokenizer.ggml.bos_token_id".into(), eos.clone()),
        ("tokenizer.ggml.eos_token_id".into(), eos),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
    ])
}

/// The tokenizer of a GGUF with a `gpt2` (byte-level BPE) model and the GPT-2 pre-tokenizer.
pub fn from_metadata(f: &GgufFile) -> Result<Tokenizer> {
    let key = |k: &str| f.get(k).ok_or_else(|| Error::Invalid(format!("missing metadata {k:?}")));
    let strings = |k: &str| -> Result<Vec<String>> {
        let a = key(k)?.as_array().ok_or_else(|| Error::Invalid(format!("metadata {k:?} is not an array")))?;
        a.iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Invalid(format!("metadata {k:?} is not an array of strings")))
    };
    let model = key("tokenizer.ggml.model")?.as_str().unwrap_or("");
    if model != "gpt2" {
        return Err(Error::Invalid(format!(
            "tokenizer model {model:?} (tokenizer.ggml.model) is not supported: only \"gpt2\" (byte-level BPE)"
        )));
    }
    let pre = f.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("(none)");
    if pre != "gpt-2" {
        return Err(Error::Invalid(format!(
            "pre-tokenizer {pre:?} (tokenizer.ggml.pre) is not supported: only \"gpt-2\""
        )));
    }
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match f.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a.iter().map(|v| v.as_u64().map_or(NORMAL, |t| t as i32)).collect(),
        None => vec![NORMAL; tokens.len()],
    };
    let merges = strings("tokenizer.ggml.merges")?
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Invalid("tokenizer.ggml.merges: a merge is not \"a b\"".into()))?;
    let ty = |id: usize| types.get(id).copied().unwrap_or(NORMAL);
    let vocab: Vocab =
        tokens.iter().enumerate().filter(|&(id, _)| ty(id) != UNUSED).map(|(id, t)| (t.clone(), id as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Invalid(format!("tokenizer.ggml.*: cannot build the BPE: {e}")))?;
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(byte_level));
    inner.with_post_processor(Some(byte_level));
    inner.with_decoder(Some(byte_level));
    let control: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| ty(id) == CONTROL)
        .map(|(_, t)| AddedToken::from(t.clone(), true))
        .collect();
    inner
        .add_special_tokens(control)
        .map_err(|e| Error::Invalid(format!("tokenizer.ggml.*: cannot add the control tokens: {e}")))?;
    Tokenizer::wrap(inner, "the GGUF's tokenizer")
}
