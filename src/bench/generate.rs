//! Generation speed of a workload's model (random weights): the prompt's time (prefill, to the
//! first sampled token) and the decode rate of the tokens after it, greedy, to a fixed length.

use super::{adapter, emit, workload};
use crate::infer::{generate as decode, SamplingConfig};
use crate::nn::GPTModel;
use crate::rng::Rng;
use crate::{bail, Device, Result};
use serde_json::json;
use std::time::Instant;

/// Options of `irontensor bench generate`.
#[derive(Clone, Debug)]
pub struct GenerateBench {
    pub workload: String,
    pub device: Device,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// Recompute the whole context for every token instead of using the KV cache.
    pub no_cache: bool,
}

/// Runs the benchmark (one untimed run first), prints its JSON line, and returns it.
pub fn generate(o: &GenerateBench) -> Result<serde_json::Value> {
    let w = workload(&o.workload)?;
    let ctx = w.model.max_seq_len;
    if o.prompt_tokens == 0 || o.max_tokens == 0 || o.prompt_tokens + o.max_tokens > ctx {
        bail!(
            Invalid,
            "bench generate: --prompt-tokens and --max-tokens must be at least 1 and add up to at most the {} model's context of {ctx}",
            w.name
        );
    }
    let model = GPTModel::new_on(w.model.clone(), o.device, 0)?;
    let mut rng = Rng::new(7);
    let prompt: Vec<u32> = (0..o.prompt_tokens).map(|_| rng.below(w.model.vocab_size as u64) as u32).collect();
    let cfg = SamplingConfig { temperature: 0.0, max_tokens: o.max_tokens, ..Default::default() };
    let run = || -> Result<(f64, f64, usize)> {
        let start = Instant::now();
        let mut first = None;
        let out = decode(&model, &prompt, &cfg, &[], !o.no_cache, |_| {
            first.get_or_insert_with(Instant::now);
        })?;
        let first = first.unwrap_or_else(Instant::now);
        Ok(((first - start).as_secs_f64(), first.elapsed().as_secs_f64(), out.len()))
    };
    run()?; // pipelines compile, buffers pool
    let (prefill, decode_s, made) = run()?;
    let out = json!({
        "bench": "generate",
        "impl": "irontensor",
        "workload": w.name,
        "device": o.device.name(),
        "adapter": adapter(o.device),
        "matmul": match (o.device, crate::matmul_precision()) {
            (Device::Gpu, crate::MatmulPrecision::F16) => "f16",
            _ => "fp32",
        },
        "cache": !o.no_cache,
        "prompt_tokens": o.prompt_tokens,
        "max_tokens": o.max_tokens,
        "generated": made,
        "prefill_ms": super::round(prefill * 1e3, 3),
        "decode_tokens_per_s": super::round((made - 1) as f64 / decode_s, 1),
    });
    emit(&out);
    eprintln!(
        "generate {} on {}: prompt {} tokens in {:.1} ms; {} tokens at {:.1} tokens/s after the first",
        w.name,
        adapter(o.device),
        o.prompt_tokens,
        prefill * 1e3,
        made,
        out["decode_tokens_per_s"]
    );
    Ok(out)
}
