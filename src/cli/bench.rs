//! `irontensor bench`: checks the flags, then runs the benchmarks of `crate::bench`.

use super::{at_least_one, bad_flag};
use crate::bench;
use crate::train::OptimizerKind;
use crate::{Device, Result};

/// The flags of `irontensor bench train`.
#[derive(Clone, Debug)]
pub struct BenchTrainOptions {
    pub workload: String,
    pub device: String,
    pub steps: usize,
    pub warmup: usize,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub optimizer: Option<String>,
    pub no_split: bool,
    /// `--checkpoint-activations`: recompute each block in the backward pass.
    pub checkpoint_activations: bool,
    /// Weights stored in BF16 (`IRONTENSOR_BF16=1`).
    pub bf16: bool,
    /// `--precision` (None: `precision_env`).
    pub precision: Option<String>,
    /// `IRONTENSOR_MATMUL`'s choice.
    pub precision_env: crate::settings::PrecisionChoice,
    /// `--lora RANK`: adapters on q, k, v, o, the weights frozen.
    pub lora: Option<usize>,
}

/// Training throughput of a named workload, one JSON line.
pub fn bench_train(o: &BenchTrainOptions) -> Result<()> {
    let w = bench::workload(&o.workload)?;
    at_least_one("steps", o.steps)?;
    if let Some(b) = o.batch {
        at_least_one("batch", b)?;
    }
    if let Some(s) = o.seq {
        if s == 0 || s > w.model.max_seq_len {
            let range = format!("must be between 1 and the {} workload's max_seq_len {}", w.name, w.model.max_seq_len);
            return Err(bad_flag("seq", s, &range));
        }
    }
    let optimizer = o.optimizer.as_deref().map(|v| OptimizerKind::parse("--optimizer", v)).transpose()?;
    let device = Device::parse(&o.device)?;
    super::choose_precision(o.precision.as_deref(), o.precision_env, device)?;
    let opts = bench::TrainBench {
        workload: o.workload.clone(),
        device,
        steps: o.steps,
        warmup: o.warmup,
        batch: o.batch,
        seq: o.seq,
        optimizer,
        split: !o.no_split,
        checkpoint_activations: o.checkpoint_activations,
        bf16: o.bf16,
        lora: o.lora.map(|r| at_least_one("lora", r)).transpose()?,
    };
    bench::train(&opts).map(|_| ())
}

/// Generation speed of a named workload's model (random weights), one JSON line.
pub fn bench_generate(
    o: &bench::GenerateBench,
    precision: Option<&str>,
    env: crate::settings::PrecisionChoice,
) -> Result<()> {
    super::choose_precision(precision, env, o.device)?;
    bench::generate(o).map(|_| ())
}

/// The kernel benchmarks of `irontensor bench`.
#[derive(Clone, Copy, Debug)]
pub enum Kernel {
    Matmul,
    /// FlashAttention, causal or not.
    Attention {
        causal: bool,
    },
    CrossEntropy,
}

/// Runs kernel benchmark `k` on `device` ("cpu", "gpu", "auto") for `shapes` (its --shapes).
pub fn bench_kernels(k: Kernel, device: &str, shapes: &str) -> Result<()> {
    let device = Device::parse(device)?;
    match k {
        Kernel::Matmul => bench::matmul(device, shapes),
        Kernel::Attention { causal } => bench::attention(device, shapes, causal),
        Kernel::CrossEntropy => bench::cross_entropy(device, shapes),
    }
}
