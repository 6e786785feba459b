//! Training layer: the Trainer (its step, loss scaling, checkpoints, MPI snapshot), the
//! training loop, learning-rate schedulers and checkpoint files.

pub mod checkpoint;
mod checkpoints;
mod config;
mod hessian;
mod loss_scale;
mod memory;
mod plot;
pub mod run;
mod scheduler;
mod snapshot;
mod step;
mod trainer;

pub use checkpoints::load_latest_model;
pub use config::{OptimizerKind, TrainingConfig};
pub use loss_scale::LossScale;
pub use memory::{gb, MemoryPlan};
pub use plot::loss_svg;
pub use run::{catch_ctrl_c, fit, RunOptions, RunSummary, StepHook};
pub use scheduler::{ConstantLR, CosineAnnealingLR, Decay, InverseSqrtLR, LinearLR, LrScheduler};
pub use trainer::Trainer;
