//! Training throughput of named workloads: ms per step, tokens/s, the forward / backward /
//! optimizer split, peak memory against weights + gradients + optimizer state + activations.

use super::{adapter, emit, median, process_cpu_seconds, process_memory, round, sync};
use crate::nn::{LoraConfig, ModelConfig};
use crate::profile::{self, Phase};
use crate::rng::Rng;
use crate::train::{MemoryPlan, OptimizerKind, Trainer, TrainingConfig};
use crate::{bail, Device, Result, Tensor};
use serde_json::json;
use std::time::Instant;

/// Workload names `irontensor bench train --workload` accepts.
pub const WORKLOADS: [&str; 6] = ["seed-tiny", "shakespeare", "gpt2-small", "llama-1b", "llama-3.2-1b", "llama-8b"];

/// A model, its batch shape and optimizer; dev/bench_torch.py defines the same ones.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub model: ModelConfig,
    pub batch: usize,
    pub seq: usize,
    pub optimizer: OptimizerKind,
}

/// The workload called `name`.
pub fn workload(name: &str) -> Result<Workload> {
    let (model, batch, optimizer) = match name {
        // vocab 32000, hidden 256, 4 layers, 4 heads, FFN 512, tied embeddings, no dropout.
        "seed-tiny" => {
            let m = ModelConfig { hidden_dim: 256, intermediate_dim: 512, max_seq_len: 256, ..ModelConfig::tiny() };
            (m, 16, OptimizerKind::Lion)
        }
        // The preset as `irontensor train` uses it on a GPU: dropout 0.2, AdamW.
        "shakespeare" => (ModelConfig::shakespeare(), 64, OptimizerKind::AdamW),
        // GPT-2 small's size (124M parameters) in the Llama style: SwiGLU 2560, tied, 16 × 1024 tokens.
        "gpt2-small" => (ModelConfig { rope_base: 10000.0, ..llama(768, 12, 12, 12, 2560) }, 16, OptimizerKind::AdamW),
        // Llama 3.2 1B's shapes (1.0B parameters with vocab 32768, tied embeddings), 4 × 1024 tokens.
        "llama-1b" => (llama(2048, 16, 32, 8, 8192), 4, OptimizerKind::AdamW),
        // Llama 3.2 1B itself (1.24B parameters: its 128256-token vocabulary, tied), 4 × 1024 tokens:
        // the fine-tuning comparison with dev/bench_peft.py.
        "llama-3.2-1b" => (ModelConfig { vocab_size: 128256, ..llama(2048, 16, 32, 8, 8192) }, 4, OptimizerKind::AdamW),
        // Llama 3 8B's shapes (7.0B parameters with vocab 32768, untied), 1 × 1024 tokens: with
        // IRONTENSOR_BF16=1 and Lion it fits a 140 GB card.
        "llama-8b" => (ModelConfig { tie_weights: false, ..llama(4096, 32, 32, 8, 14336) }, 1, OptimizerKind::Lion),
        other => bail!(Invalid, "bench train: unknown workload {other:?}: expected one of {}", WORKLOADS.join(", ")),
    };
    let seq = if model.max_seq_len >= 1024 { 1024 } else { 256 };
    Ok(Workload { name: name.to_string(), model, batch, seq, optimizer })
}

/// A Llama-shaped model: vocab 32768, RoPE base 500000, tied embeddings, no dropout.
fn llama(hidden: usize, layers: usize, heads: usize, kv_heads: usize, ffn: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 32768,
        hidden_dim: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        intermediate_dim: ffn,
        max_seq_len: 1024,
        rope_base: 500000.0,
        ..ModelConfig::tiny()
    }
}

/// Options of `irontensor bench train`.
#[derive(Clone, Debug)]
pub struct TrainBench {
    pub workload: String,
    pub device: Device,
    /// Timed steps (after `warmup` untimed ones).
    pub steps: usize,
    pub warmup: usize,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub optimizer: Option<OptimizerKind>,
    /// After the timed steps, run as many again under the profiler for the phase split.
    pub split: bool,
    /// Recompute each transformer block in the backward pass (`--checkpoint-activations`).
    pub checkpoint_activations: bool,
    /// Weights stored in BF16 (`IRONTENSOR_BF16=1`).
    pub bf16: bool,
    /// LoRA adapters of this rank on q, k, v and o (alpha 2·rank), the weights frozen.
    pub lora: Option<usize>,
}

/// Runs the benchmark, prints its JSON line and summary, and returns the JSON.
pub fn train(opts: &TrainBench) -> Result<serde_json::Value> {
    let mut w = workload(&opts.workload)?;
    w.batch = opts.batch.unwrap_or(w.batch);
    w.seq = opts.seq.unwrap_or(w.seq);
    w.optimizer = opts.optimizer.unwrap_or(w.optimizer);
    w.model.max_seq_len = w.model.max_seq_len.max(w.seq);
    if w.batch == 0 || w.seq == 0 || opts.steps == 0 {
        bail!(Invalid, "bench train: batch, seq and steps must be positive");
    }
    let device = opts.device;
    let (b, t, vocab) = (w.batch, w.seq, w.model.vocab_size);
    let rss_base = process_memory();
    let lora = opts.lora.map(|rank| LoraConfig {
        rank,
        alpha: 2.0 * rank as f32,
        dropout: 0.0,
        targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
    });
    let config = TrainingConfig {
        use_bf16: opts.bf16,
        checkpoint_activations: opts.checkpoint_activations,
        lora,
        ..train_config(w.optimizer, opts.warmup + 2 * opts.steps + 2)
    };
    let plan = MemoryPlan::new(&w.model, &config, b, t);
    let mut trainer = Trainer::new_on(w.model.clone(), config, device)?;
    let params = trainer.model.parameters();
    let num_params: usize = params.iter().map(|(_, p)| p.numel()).sum();
    let param_bytes: u64 = params.iter().map(|(_, p)| (p.numel() * p.dtype().size_bytes()) as u64).sum();
    let trained: usize = trainer.model.trainable().iter().map(|(_, p)| p.numel()).sum();
    let precision = trainer.model.config.precision.name();
    // Random tokens, a few distinct batches cycled: no dataset is needed.
    let mut rng = Rng::new(1234);
    let mut ids = || (0..b * t).map(|_| rng.below(vocab as u64) as u32).collect::<Vec<u32>>();
    let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..4).map(|_| (ids(), ids())).collect();
    let mut step = |trainer: &mut Trainer, i: usize| -> Result<f32> {
        let (x, y) = &batches[i % batches.len()];
        Ok(trainer.train_step(x, y, b, t)?.0)
    };

    let first_loss = step(&mut trainer, 0)?;
    for i in 1..opts.warmup {
        step(&mut trainer, i)?;
    }
    sync(device);
    // What a step keeps between steps (weights, optimizer state) and what its forward saves.
    let state_bytes = device.memory().0;
    // Less the gradients the fused cross-entropy makes in the forward (d hidden [B·T, C], d
    // weight [V, C]): gradients, not saved activations; the peak still counts them.
    let ce_grad_bytes = ((b * t + vocab) * w.model.hidden_dim * 4) as u64;
    let activation_bytes = saved_activations(&trainer, &batches[0], b, t)?.saturating_sub(ce_grad_bytes);
    device.reset_peak_memory();

    let mut times = Vec::with_capacity(opts.steps);
    let mut last_loss = first_loss;
    let (start, cpu_start) = (Instant::now(), process_cpu_seconds());
    for i in 0..opts.steps {
        let t0 = Instant::now();
        last_loss = step(&mut trainer, i)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    sync(device);
    let total = start.elapsed().as_secs_f64();
    let cpu_ms = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| round((b - a) / opts.steps as f64 * 1e3, 1));
    let peak_bytes = device.memory().1;
    let rss = process_memory();

    let split = if opts.split { Some(phase_split(&mut trainer, &mut step, opts.steps)?) } else { None };

    let ms = median(&times) * 1e3;
    let tokens_per_s = (b * t * opts.steps) as f64 / total;
    // Gradients and optimizer state are f32 whatever the weights' storage is.
    let (grad_bytes, opt_bytes) = (trained as u64 * 4, w.optimizer.state_bytes(trained as u64));
    let expected = param_bytes + grad_bytes + opt_bytes + activation_bytes;
    let mut out = json!({
        "bench": "train",
        "impl": "irontensor",
        "workload": w.name,
        "device": device.name(),
        "adapter": adapter(device),
        "precision": precision,
        "matmul": match (device, crate::matmul_precision()) {
            (Device::Gpu, crate::MatmulPrecision::F16) => "f16",
            _ => "fp32",
        },
        "optimizer": format!("{:?}", w.optimizer).to_lowercase(),
        "batch": b,
        "seq": t,
        "checkpoint_activations": opts.checkpoint_activations,
        "params": num_params,
        "lora": opts.lora,
        "trainable_params": trained,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "ms_per_step": round(ms, 3),
        "ms_per_step_mean": round(total / opts.steps as f64 * 1e3, 3),
        // CPU time of the whole process (every thread) per timed step.
        "cpu_ms_per_step": cpu_ms,
        "tokens_per_s": round(tokens_per_s, 1),
        "loss_first": first_loss,
        "loss_last": last_loss,
        "peak_bytes": peak_bytes,
        "state_bytes": state_bytes,
        "param_bytes": param_bytes,
        "grad_bytes": grad_bytes,
        "optimizer_bytes": opt_bytes,
        "activation_bytes": activation_bytes,
        "expected_bytes": expected,
        "peak_over_expected": round(peak_bytes as f64 / expected as f64, 3),
        "plan_bytes": plan.total(),
        "rss_base_bytes": rss_base.map(|m| m.0),
        "rss_peak_bytes": rss.map(|m| m.1),
        "pool_bytes": (device == Device::Gpu).then(|| crate::device::gpu::context().map(|c| c.pool_bytes()).ok()).flatten(),
    });
    if let Some((f, bw, o, step_ms)) = split {
        let m = out.as_object_mut().expect("an object");
        m.insert("forward_ms".into(), json!(round(f, 3)));
        m.insert("backward_ms".into(), json!(round(bw, 3)));
        m.insert("optimizer_ms".into(), json!(round(o, 3)));
        m.insert("split_step_ms".into(), json!(round(step_ms, 3)));
        m.insert("split_mode".into(), json!(SPLIT_MODE));
    }
    emit(&out);
    summary(&out);
    Ok(out)
}

const SPLIT_MODE: &str =
    "separate pass under the profiler: the GPU is synchronised at every phase boundary; ms_per_step is unsynchronised";

/// Hyper-parameters as `irontensor train` sets them (they do not change the work per step).
fn train_config(optimizer: OptimizerKind, total_steps: usize) -> TrainingConfig {
    let mut c = TrainingConfig {
        learning_rate: 1e-3,
        warmup_steps: 0,
        total_steps,
        optimizer,
        checkpoint_dir: String::new(),
        ..Default::default()
    };
    optimizer.set_defaults(&mut c);
    c
}

/// Bytes of tensors the forward pass keeps alive for the backward (the tape's saved tensors,
/// dropout masks, the token ids and the loss), measured as live memory with and without them.
fn saved_activations(trainer: &Trainer, (x, y): &(Vec<u32>, Vec<u32>), b: usize, t: usize) -> Result<u64> {
    let device = trainer.model.device();
    let before = device.memory().0;
    let x = Tensor::from_u32_on(x, &[b, t], device)?;
    let y = Tensor::from_u32_on(y, &[b, t], device)?;
    let loss = trainer.model.loss(&x, &y, b, t, Some(7))?;
    sync(device);
    let after = device.memory().0;
    drop((loss, x, y));
    sync(device);
    Ok(after.saturating_sub(before))
}

/// Mean forward, backward and optimizer ms per step, and the mean step, over `steps` steps
/// with the profiler on (its phase guards synchronise the GPU at each boundary).
fn phase_split(
    trainer: &mut Trainer,
    step: &mut impl FnMut(&mut Trainer, usize) -> Result<f32>,
    steps: usize,
) -> Result<(f64, f64, f64, f64)> {
    let was_on = profile::is_enabled();
    profile::enable();
    profile::reset();
    let start = Instant::now();
    for i in 0..steps {
        step(trainer, i)?;
    }
    sync(trainer.model.device());
    let total = start.elapsed().as_secs_f64();
    let ms = |p: Phase| profile::phase_time(p).as_secs_f64() * 1e3 / steps as f64;
    let split = (ms(Phase::Forward), ms(Phase::Backward), ms(Phase::Optimizer), total * 1e3 / steps as f64);
    if was_on {
        eprintln!("{}", profile::report()); // IRONTENSOR_PROFILE=1: the split pass, op by op
    } else {
        profile::disable();
    }
    profile::reset();
    Ok(split)
}

fn summary(v: &serde_json::Value) {
    let mib = |k: &str| v[k].as_f64().unwrap_or(f64::NAN) / (1 << 20) as f64;
    eprintln!(
        "train {} on {} ({}): {:.1}M params, batch {}×{}: {:.1} ms/step, {:.0} tokens/s; peak {:.1} MiB \
         (weights+grads+optimizer+activations {:.1} MiB, ×{})",
        v["workload"].as_str().unwrap_or("?"),
        v["device"].as_str().unwrap_or("?"),
        v["adapter"].as_str().unwrap_or("?"),
        v["params"].as_f64().unwrap_or(0.0) / 1e6,
        v["batch"],
        v["seq"],
        v["ms_per_step"].as_f64().unwrap_or(f64::NAN),
        v["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
        mib("peak_bytes"),
        mib("expected_bytes"),
        v["peak_over_expected"],
    );
    if v.get("forward_ms").is_some() {
        eprintln!(
            "  split (profiled pass, synchronised): forward {} ms, backward {} ms, optimizer {} ms; step {} ms",
            v["forward_ms"], v["backward_ms"], v["optimizer_ms"], v["split_step_ms"]
        );
    }
}
