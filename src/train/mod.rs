//! Training layer: the Trainer (its step, loss scaling, checkpoints, MPI snapshot), the
//! training loop, learning-rate schedulers, checkpoint files, LoRA adapters and model loading.

mod adapter;
pub mod checkpoint;
mod checkpoints;
mod config;
mod hessian;
mod loss_scale;
mod memory;
mod plot;
mod pretrained;
pub mod run;
mod scheduler;
mod snapshot;
mod step;
mod trainer;

pub use adapter::{is_adapter, read_adapter_config};
pub use checkpoints::load_latest_model;
pub use config::{OptimizerKind, TrainingConfig};
pub use loss_scale::LossScale;
pub use memory::{gb, MemoryPlan};
pub use plot::loss_svg;
pub use pretrained::{load_dir, load_model, load_weights};
pub use run::{catch_ctrl_c, fit, RunOptions, RunSummary, StepHook};
pub use scheduler::{ConstantLR, CosineAnnealingLR, Decay, InverseSqrtLR, LinearLR, LrScheduler};
pub use trainer::Trainer;
