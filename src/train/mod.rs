//! Training layer: the Trainer, learning-rate schedulers and checkpoints.

pub mod checkpoint;
mod plot;
pub mod run;
mod scheduler;
mod trainer;

pub use plot::loss_svg;
pub use run::{catch_ctrl_c, fit, RunOptions, RunSummary};
pub use scheduler::{ConstantLR, CosineAnnealingLR, Decay, InverseSqrtLR, LinearLR, LrScheduler};
pub use trainer::{OptimizerKind, Trainer, TrainingConfig};
