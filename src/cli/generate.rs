//! `irontensor generate`: load a checkpoint (or a run's newest that loads) and stream text.

use super::bad_flag;
use super::ModelText;
use crate::data::{Message, Tokenizer};
use crate::infer::{self, SamplingConfig};
use crate::nn::GPTModel;
pub use crate::train::load_model;
use crate::{Device, Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The flags of `irontensor generate`.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// A checkpoint directory, or a run directory (its newest checkpoint that loads).
    pub checkpoint: PathBuf,
    pub prompt: String,
    /// `--chat`: this user message through the model's chat template; only the reply is printed.
    pub chat: Option<String>,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    pub device: String,
    pub no_cache: bool,
    /// Past the model's context, slide the window instead of stopping.
    pub slide: bool,
    /// Continuations of the prompt made together, seeded `seed`, `seed + 1`, ...
    pub batch: usize,
    /// A LoRA adapter folder applied to the model, unmerged.
    pub adapter: Option<PathBuf>,
}

/// The sampling flags, checked.
fn sampling(o: &GenerateOptions) -> Result<SamplingConfig> {
    if !(o.temperature.is_finite() && o.temperature >= 0.0) {
        return Err(bad_flag("temperature", o.temperature, "must be a finite number >= 0 (0 = greedy)"));
    }
    if !(o.top_p > 0.0 && o.top_p <= 1.0) {
        return Err(bad_flag("top-p", o.top_p, "must be in (0, 1] (1 = every token)"));
    }
    super::at_least_one("max-tokens", o.max_tokens)?;
    super::at_least_one("batch", o.batch)?;
    if o.batch > 1 && o.chat.is_some() {
        return Err(bad_flag("batch", o.batch, "works with --prompt only, not --chat"));
    }
    Ok(SamplingConfig {
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        seed: o.seed,
        max_tokens: o.max_tokens,
        slide: o.slide,
    })
}

/// Runs `irontensor generate` with `o`: the text goes to stdout as it is sampled.
pub fn generate(o: &GenerateOptions) -> Result<()> {
    let cfg = sampling(o)?;
    let (mut model, tok) = load_model(&o.checkpoint, Device::parse(&o.device)?)?;
    if let Some(dir) = &o.adapter {
        model =
            model.with_adapter(dir).map_err(|e| crate::Error::Invalid(format!("--adapter {}: {e}", dir.display())))?;
    }
    match &o.chat {
        Some(message) => chat(&model, &tok, &o.checkpoint, message, &cfg, !o.no_cache),
        None if o.batch > 1 => write_batch(&model, &tok, &o.prompt, &cfg, !o.no_cache, o.batch),
        None => write_text(&model, &tok, &o.prompt, &cfg, !o.no_cache),
    }
}

/// `generate --chat`: renders one user turn and the assistant's opening with the model's chat
/// template, and prints the reply alone, up to an end-of-turn token (the eos_token, or any
/// eos_token_id of generation_config.json).
fn chat(
    model: &GPTModel,
    tok: &Tokenizer,
    given: &Path,
    message: &str,
    cfg: &SamplingConfig,
    cache: bool,
) -> Result<()> {
    let text = ModelText::find(given, tok)?;
    let Some(template) = &text.template else {
        return Err(Error::Invalid(format!(
            "generate --chat: {} has no chat template (chat_template in tokenizer_config.json, or chat_template.jinja); \
             use --prompt for plain text",
            given.display()
        )));
    };
    let prompt = template.render(&[Message { role: "user".into(), content: message.into() }], true)?;
    let ids = tok.encode(&prompt);
    let mut print = printer(tok);
    let made = infer::generate(model, &ids, cfg, &text.stops, cache, |t| {
        if !text.stops.contains(&t) {
            print(t);
        }
    })?;
    println!();
    if !made.last().is_some_and(|t| text.stops.contains(t)) {
        note!("stopped after {} tokens without an end-of-turn token (--max-tokens)", made.len());
    }
    Ok(())
}

/// Prints each token's text to stdout as it comes, decoding the growing tail so that multi-byte
/// characters split across tokens print whole.
fn printer(tok: &Tokenizer) -> impl FnMut(u32) + '_ {
    let mut pending: Vec<u32> = Vec::new();
    move |t| {
        pending.push(t);
        let s = tok.decode(&pending);
        if !s.ends_with('\u{fffd}') {
            print!("{s}");
            let _ = std::io::stdout().flush();
            pending.clear();
        }
    }
}

/// Streams text generated after `prompt` to stdout; on stderr, llama.cpp-style timings: the
/// prompt's tokens and time (prefill, to the first sampled token) and the rate of the rest
/// (decode), and why it stopped early if it did.
pub fn write_text(model: &GPTModel, tok: &Tokenizer, prompt: &str, cfg: &SamplingConfig, cache: bool) -> Result<()> {
    let ids = tok.encode(prompt);
    let ids = if ids.is_empty() { vec![tok.eos_id()] } else { ids };
    print!("{prompt}");
    let mut print = printer(tok);
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let made = infer::generate(model, &ids, cfg, &[tok.eos_id()], cache, |t| {
        first.get_or_insert_with(Instant::now);
        print(t);
    })?;
    println!();
    timings(ids.len(), 1, made.len(), start, first, Instant::now());
    stopped(model, tok, cfg, &ids, &made);
    Ok(())
}

/// `generate --batch N`: N continuations of `prompt` made together (row i seeded `cfg.seed + i`),
/// printed one after another under a header line once all are done.
fn write_batch(
    model: &GPTModel,
    tok: &Tokenizer,
    prompt: &str,
    cfg: &SamplingConfig,
    cache: bool,
    batch: usize,
) -> Result<()> {
    let ids = tok.encode(prompt);
    let ids = if ids.is_empty() { vec![tok.eos_id()] } else { ids };
    let prompts = vec![ids.as_slice(); batch];
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let made = infer::generate_batch(model, &prompts, cfg, &[tok.eos_id()], cache, |_, _| {
        first.get_or_insert_with(Instant::now);
    })?;
    let end = Instant::now();
    for (i, row) in made.iter().enumerate() {
        println!("--- {} of {batch} (seed {}) ---", i + 1, cfg.seed.wrapping_add(i as u64));
        println!("{prompt}{}", tok.decode(row));
    }
    let longest = made.iter().map(Vec::len).max().unwrap_or(0);
    timings(ids.len(), batch, longest, start, first, end);
    stopped(model, tok, cfg, &ids, &made[0]);
    Ok(())
}

/// llama.cpp-style timings on stderr: the prompt's tokens and time (prefill, to the first sampled
/// token) and the rate of the rest (decode), every row's tokens counted.
fn timings(prompt: usize, rows: usize, made: usize, start: Instant, first: Option<Instant>, end: Instant) {
    let Some(first) = first else { return };
    let prefill = (first - start).as_secs_f64();
    let decode = (end - first).as_secs_f64();
    let rest = rows * made.saturating_sub(1);
    let rows_note = if rows > 1 { format!(" × {rows} rows") } else { String::new() };
    note!(
        "prompt: {prompt} tokens{rows_note} in {:.1} ms ({:.0} tokens/s); generated: {made} tokens{rows_note}, {rest} after the first in {:.1} ms ({:.1} tokens/s)",
        prefill * 1e3,
        (rows * prompt) as f64 / prefill,
        decode * 1e3,
        if rest > 0 { rest as f64 / decode } else { 0.0 }
    );
}

/// Says why generation stopped short when the context filled up.
fn stopped(model: &GPTModel, tok: &Tokenizer, cfg: &SamplingConfig, ids: &[u32], made: &[u32]) {
    let full = ids.len() + made.len() > model.config.max_seq_len;
    if !cfg.slide && made.len() < cfg.max_tokens && made.last() != Some(&tok.eos_id()) && full {
        note!(
            "stopped: the model's context of {} tokens is full (--slide goes on over a sliding window)",
            model.config.max_seq_len
        );
    }
}
