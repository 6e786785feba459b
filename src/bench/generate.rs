//! Generation speed of a workload's model (random weights): the prompt's time (prefill, to the
//! first sampled token) and the decode rate of the tokens after it, to a fixed length, greedy or
//! sampled, one prompt or a batch; on the GPU also the work each decoded token sends.

use super::{adapter, emit, workload};
use crate::device::gpu;
use crate::infer::{generate_batch, SamplingConfig};
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
    /// Prompts decoded together (random, one length).
    pub batch: usize,
    /// 0: greedy; else sampled with `top_k` and `top_p`.
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
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
    if o.batch == 0 || !(o.temperature.is_finite() && o.temperature >= 0.0) || !(o.top_p > 0.0 && o.top_p <= 1.0) {
        bail!(Invalid, "bench generate: --batch must be at least 1, --temperature >= 0 and --top-p in (0, 1]");
    }
    let model = GPTModel::new_on(w.model.clone(), o.device, 0)?;
    let mut rng = Rng::new(7);
    let vocab = w.model.vocab_size as u64;
    let prompts: Vec<Vec<u32>> =
        (0..o.batch).map(|_| (0..o.prompt_tokens).map(|_| rng.below(vocab) as u32).collect()).collect();
    let prompts: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let cfg = SamplingConfig {
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        max_tokens: o.max_tokens,
        ..Default::default()
    };
    // (prefill s, decode s, tokens per row, GPU work of the decode steps)
    let run = || -> Result<(f64, f64, usize, gpu::Counters)> {
        let start = Instant::now();
        let mut first = None;
        let mut at_first = gpu::counters();
        let out = generate_batch(&model, &prompts, &cfg, &[], !o.no_cache, |_, _| {
            if first.is_none() {
                first = Some(Instant::now());
                at_first = gpu::counters();
            }
        })?;
        let first = first.unwrap_or_else(Instant::now);
        let work = gpu::counters() - at_first;
        Ok(((first - start).as_secs_f64(), first.elapsed().as_secs_f64(), out[0].len(), work))
    };
    run()?; // pipelines compile, buffers pool
    let (prefill, decode_s, made, work) = run()?;
    let steps = (made - 1).max(1) as f64;
    let per_step = |n: u64| super::round(n as f64 / steps, 2);
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
        "batch": o.batch,
        "temperature": super::round(o.temperature as f64, 3),
        "generated": made,
        "prefill_ms": super::round(prefill * 1e3, 3),
        // Every row's tokens: batch × (tokens after the first) per second.
        "decode_tokens_per_s": super::round(o.batch as f64 * (made - 1) as f64 / decode_s, 1),
        "decode_ms_per_step": super::round(decode_s * 1e3 / steps, 3),
        // What each decode step sent the GPU (0 on the CPU).
        "dispatches_per_token": per_step(work.dispatches),
        "submits_per_token": per_step(work.submits),
        "reads_per_token": per_step(work.reads),
        "uploads_per_token": per_step(work.uploads),
        "bind_groups_per_token": per_step(work.bind_groups),
    });
    emit(&out);
    let work = match o.device {
        Device::Gpu => format!(
            " ({} dispatches, {} submits, {} host reads a step)",
            out["dispatches_per_token"], out["submits_per_token"], out["reads_per_token"]
        ),
        Device::Cpu => String::new(),
    };
    eprintln!(
        "generate {} on {}: prompt {} × {} tokens in {:.1} ms; {} tokens a row at {} tokens/s after the first{work}",
        w.name,
        adapter(o.device),
        o.batch,
        o.prompt_tokens,
        prefill * 1e3,
        made,
        out["decode_tokens_per_s"],
    );
    Ok(out)
}
