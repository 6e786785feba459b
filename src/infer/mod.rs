//! Text generation: sampling (temperature, top-k, top-p, seed) and a KV-cached decode loop.

use crate::nn::GPTModel;
use crate::ops::{self, Sampling};
use crate::rng::Rng;
use crate::{bail, no_grad, CommandBatch, Result, Tensor};

#[derive(Clone, Debug)]
pub struct SamplingConfig {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f32,
    pub seed: u64,
    pub max_tokens: usize,
    /// Past the model's context (`max_seq_len`): false stops there; true slides the window,
    /// re-reading the newest `max_seq_len` tokens for every further token.
    pub slide: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 0.8, top_k: 0, top_p: 0.95, seed: 0, max_tokens: 200, slide: false }
    }
}

impl SamplingConfig {
    /// The sampling rule alone (temperature, top-k, top-p).
    pub fn sampling(&self) -> Sampling {
        Sampling { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p }
    }
}

/// Draws a token id from `logits` ([V]), taking one uniform from `rng` unless greedy.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    let s = cfg.sampling();
    let u = if s.is_greedy() { 0.0 } else { rng.uniform() };
    ops::sample_row(logits, &s, u)
}

/// Continues `prompt` by up to `cfg.max_tokens` tokens, calling `on_token` as each arrives
/// (for streaming) and stopping early at any token of `stop`. With `use_cache` each new token costs one
/// token's work (KV cache); without, the whole window is recomputed (the reference).
/// A prompt longer than `max_seq_len` is an error unless `cfg.slide`; generation stops when the
/// context is full, or with `cfg.slide` goes on over the newest `max_seq_len` tokens.
pub fn generate(
    model: &GPTModel,
    prompt: &[u32],
    cfg: &SamplingConfig,
    stop: &[u32],
    use_cache: bool,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    let mut out = generate_batch(model, &[prompt], cfg, stop, use_cache, |_, t| on_token(t))?;
    Ok(out.pop().expect("one row"))
}

/// `generate` for several prompts of one length, decoded together (one row each of every
/// forward): row i draws with seed `cfg.seed + i` and stops at its own stop token, so each row
/// is what `generate` makes of its prompt with that seed. `on_token(row, id)` streams them.
/// Each step reads back only the sampled ids (4 bytes a row).
pub fn generate_batch(
    model: &GPTModel,
    prompts: &[&[u32]],
    cfg: &SamplingConfig,
    stop: &[u32],
    use_cache: bool,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    let Some(first) = prompts.first() else {
        bail!(Invalid, "generate: no prompts given; give at least one");
    };
    if first.is_empty() {
        bail!(Invalid, "generate: the prompt is empty; give at least one token");
    }
    if let Some(p) = prompts.iter().find(|p| p.len() != first.len()) {
        bail!(Invalid, "generate: batched prompts must have one length, got {} and {} tokens", first.len(), p.len());
    }
    let vocab = model.config.vocab_size;
    if let Some(&bad) = prompts.iter().flat_map(|p| p.iter()).find(|&&t| t as usize >= vocab) {
        bail!(Invalid, "generate: prompt token {bad} is outside the vocabulary of {vocab}");
    }
    let max_ctx = model.config.max_seq_len;
    if first.len() > max_ctx && !cfg.slide {
        bail!(
            Invalid,
            "generate: the prompt has {} tokens but the model reads at most {max_ctx}; shorten it, or slide the window over its last {max_ctx}",
            first.len()
        );
    }
    let (device, b, c) = (model.device(), prompts.len(), model.config.hidden_dim);
    let s = cfg.sampling();
    let mut rngs: Vec<Rng> = (0..b).map(|i| Rng::new(cfg.seed.wrapping_add(i as u64))).collect();
    let mut tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    // A token's dispatches go in one submit (the read of its ids sends them).
    let _batch = Batching::start();
    no_grad(|| {
        let mut cache = model.new_cache();
        let mut cached = 0; // positions in the cache
        for _ in 0..cfg.max_tokens {
            let n = tokens[0].len();
            if n > max_ctx {
                if !cfg.slide {
                    break; // the context is full
                }
                tokens.iter_mut().for_each(|r| drop(r.drain(..n - max_ctx)));
                cache = model.new_cache();
                cached = 0;
            }
            let pos = if use_cache { cached } else { 0 };
            let t = tokens[0].len() - pos;
            let feed: Vec<u32> = tokens.iter().flat_map(|r| r[pos..].iter().copied()).collect();
            let x = Tensor::from_u32_on(&feed, &[b, t], device)?;
            let cache_arg = if use_cache { Some(&mut cache[..]) } else { None };
            let h = model.hidden(&x, b, t, pos, cache_arg, None)?; // [B*T, C]
            cached = tokens[0].len();
            // Logits of each row's last position only: [B, V].
            let last = match t {
                1 => h,
                _ => ops::slice(&h.view(&[b, t, c])?, 1, t - 1, 1)?.view(&[b, c])?,
            };
            let logits = ops::matmul_t(&last, model.output_weight(), false, true)?;
            let draws: Vec<f64> = match s.is_greedy() {
                true => Vec::new(),
                false => rngs.iter_mut().map(|r| r.uniform()).collect(),
            };
            let ids = ops::sample(&logits, &s, &draws)?.to_vec_u32();
            for (i, &id) in ids.iter().enumerate() {
                tokens[i].push(id);
                if !done[i] {
                    on_token(i, id);
                    out[i].push(id);
                    done[i] = stop.contains(&id);
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(out)
    })
}

/// Batches GPU commands while it lives (`CommandBatch::begin`), unless batching was already on.
struct Batching(bool);

impl Batching {
    fn start() -> Batching {
        let started = !CommandBatch::is_active();
        if started {
            CommandBatch::begin();
        }
        Batching(started)
    }
}

impl Drop for Batching {
    fn drop(&mut self) {
        if self.0 {
            CommandBatch::end();
        }
    }
}
