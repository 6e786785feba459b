//! IronTensor: a small, fast framework for training LLMs, on the CPU or a GPU through wgpu/WGSL.
//!
//! Module map, bottom up: a module imports only from those on its line or above. The one loop
//! is inside the core's top line: `Tensor`'s conversions are ops, ops record into the autograd
//! graph, and the backward pass adds gradients with an op.
//! - [`settings`] (what the environment may set, read only by [`Settings::from_env`]), [`fs`]
//!   (atomic file writes), [`precision`], [`rng`]
//! - [`device`] (CPU storage; GPU context, buffer pool, [`CommandBatch`], the observer hook)
//! - [`profile`]: the opt-in profiler: op times, training phases, a report; it registers an
//!   observer with the GPU context, and ops and the trainer report to it
//! - [`tensor`], [`autograd`], [`ops`]: tensors, the reverse-mode graph behind
//!   [`Tensor::backward`], one op family per file with its CPU kernel, WGSL kernel and backward rule
//! - [`optim`]: Lion, AdamW, Sophia-G (in-place updates, stochastic rounding for BF16), gradient clipping
//! - [`nn`]: Linear, RMSNorm, attention, SwiGLU, the transformer block, [`GPTModel`]
//! - [`data`]: memory-mapped token datasets, the byte-level BPE tokenizer, checked downloads;
//!   [`dist`]: data-parallel training over MPI (`--features distributed`, ranks started by mpirun)
//! - [`train`]: the trainer, schedulers, checkpoints, the run loop; [`infer`]: generation;
//!   [`gguf`]: GGUF export and loading (llama.cpp, Ollama, LM Studio)
//! - [`bench`]: `irontensor bench`: training throughput of named workloads, kernel benchmarks
//! - [`cli`]: the `irontensor` commands (planning, data preparation, train, generate, info, bench)

pub mod autograd;
pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod dist;
mod error;
pub mod fs;
pub mod gguf;
pub mod infer;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod precision;
pub mod profile;
pub mod rng;
pub mod settings;
pub mod tensor;
pub mod train;

pub use autograd::{no_grad, Gradients};
pub use device::gpu::CommandBatch;
pub use device::Device;
pub use error::{Error, Result};
pub use nn::{GPTModel, ModelConfig};
pub use ops::*;
pub use precision::Precision;
pub use settings::Settings;
pub use tensor::Tensor;
pub use train::{CosineAnnealingLR, Trainer, TrainingConfig};

/// Applies `settings` to the library's process-wide state: the default device, the GPU
/// context's settings, the profiler and the matmul precision. Call it once, first: before any
/// tensor is made (the default device and the GPU context are chosen once, on first use).
/// `settings.bf16` and `settings.dist` are for the caller (the trainer's config, `Dist::start`).
pub fn configure(settings: &Settings) -> Result<()> {
    device::set_default_choice(settings.device)?;
    device::gpu::configure(&settings.gpu)?;
    if settings.profile {
        profile::enable();
    }
    if settings.precision == settings::PrecisionChoice::Mixed {
        ops::prefer_f16_matmul();
    }
    Ok(())
}

/// Every WGSL source the ops and optimizers use, for the Metal translation test and `irontensor info`.
pub fn kernels() -> Vec<&'static device::gpu::Kernel> {
    let mut all = ops::kernels();
    all.extend(optim::kernels());
    all
}
