//! Text generation: sampling (temperature, top-k, top-p, seed) and a KV-cached decode loop.

use crate::nn::GPTModel;
use crate::rng::Rng;
use crate::{bail, no_grad, ops, Result, Tensor};

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

/// Draws a token id from `logits` ([V]).
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best }) as u32;
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    // Candidates by descending logit, cut by top-k, then softmax, then cut by top-p.
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        idx.truncate(cfg.top_k);
    }
    let m = logits[idx[0]];
    let mut probs: Vec<f64> = idx.iter().map(|&i| (((logits[i] - m) / cfg.temperature) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p as f64
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.uniform() * total;
    for (p, &i) in probs.iter().zip(&idx) {
        if u < *p {
            return i as u32;
        }
        u -= p;
    }
    idx[idx.len() - 1] as u32
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
    if prompt.is_empty() {
        bail!(Invalid, "generate: the prompt is empty; give at least one token");
    }
    let vocab = model.config.vocab_size;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        bail!(Invalid, "generate: prompt token {bad} is outside the vocabulary of {vocab}");
    }
    let max_ctx = model.config.max_seq_len;
    if prompt.len() > max_ctx && !cfg.slide {
        bail!(
            Invalid,
            "generate: the prompt has {} tokens but the model reads at most {max_ctx}; shorten it, or slide the window over its last {max_ctx}",
            prompt.len()
        );
    }
    let device = model.device();
    let mut rng = Rng::new(cfg.seed);
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    no_grad(|| {
        let mut cache = model.new_cache();
        let mut cached = 0; // positions in the cache
        while out.len() < cfg.max_tokens {
            if tokens.len() > max_ctx {
                if !cfg.slide {
                    break; // the context is full
                }
                tokens.drain(..tokens.len() - max_ctx);
                cache = model.new_cache();
                cached = 0;
            }
            let (feed, pos) = if use_cache { (&tokens[cached..], cached) } else { (&tokens[..], 0) };
            let t = feed.len();
            let x = Tensor::from_u32_on(feed, &[1, t], device)?;
            let h = if use_cache {
                model.hidden(&x, 1, t, pos, Some(&mut cache), None)?
            } else {
                model.hidden(&x, 1, t, pos, None, None)?
            };
            cached = tokens.len();
            let last = ops::slice(&h, 0, t - 1, 1)?;
            let logits = ops::matmul_t(&last, model.output_weight(), false, true)?.to_vec();
            let next = sample(&logits, cfg, &mut rng);
            on_token(next);
            out.push(next);
            tokens.push(next);
            if stop.contains(&next) {
                break;
            }
        }
        Ok(out)
    })
}
