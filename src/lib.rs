//! IronTensor: a small, fast framework for training LLMs, on the CPU or a GPU through wgpu/WGSL.
//!
//! Module map (layers as in the spec, bottom up):
//! - [`precision`], [`tensor`], [`device`] (CPU storage; GPU context, buffer pool, [`CommandBatch`]): core
//! - [`autograd`]: the reverse-mode graph behind [`Tensor::backward`]
//! - [`ops`]: one op family per file, each with its CPU kernel, WGSL kernel and backward rule
//! - [`optim`]: Lion, AdamW (in-place updates, stochastic rounding for BF16), gradient clipping
//! - [`profile`]: the opt-in profiler (`IRONTENSOR_PROFILE=1`): op times, training phases, a report
//! - [`data`]: memory-mapped token datasets, the byte-level BPE tokenizer, checked downloads
//! - [`bench`]: `irontensor bench`: training throughput of named workloads, kernel benchmarks
//! - [`gguf`]: GGUF export and loading (llama.cpp, Ollama, LM Studio)
//! - [`dist`]: data-parallel training over MPI (`--features distributed`, ranks started by mpirun)

pub mod autograd;
pub mod bench;
pub mod data;
pub mod device;
pub mod dist;
mod error;
pub mod gguf;
pub mod infer;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod precision;
pub mod profile;
pub mod rng;
pub mod tensor;
pub mod train;

pub use autograd::{no_grad, Gradients};
pub use device::gpu::CommandBatch;
pub use device::Device;
pub use error::{Error, Result};
pub use nn::{GPTModel, ModelConfig};
pub use ops::*;
pub use precision::Precision;
pub use tensor::Tensor;
pub use train::{CosineAnnealingLR, Trainer, TrainingConfig};
