//! Training layer: the Trainer, learning-rate schedulers and checkpoints.

pub mod checkpoint;
mod scheduler;
mod trainer;

pub use scheduler::{ConstantLR, CosineAnnealingLR, Decay, InverseSqrtLR, LinearLR, LrScheduler};
pub use trainer::{OptimizerKind, Trainer, TrainingConfig};
