//! Learning-rate schedules: Constant, Linear, Cosine, InverseSqrt, each with optional warmup.

use serde::{Deserialize, Serialize};

/// The shape of the decay after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Decay {
    /// peak forever.
    Constant,
    /// peak -> min_lr linearly at `total`.
    Linear,
    /// peak -> min_lr along half a cosine at `total`.
    Cosine,
    /// peak · sqrt(warmup / step) after warmup (peak · 1/sqrt(step) with no warmup).
    InverseSqrt,
}

/// A learning rate for every step: linear warmup from 0 over `warmup` steps, then `decay`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrScheduler {
    pub peak: f32,
    pub min_lr: f32,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
}

impl LrScheduler {
    pub fn new(decay: Decay, peak: f32, warmup: usize, total: usize) -> Self {
        LrScheduler { peak, min_lr: 0.0, warmup, total, decay }
    }

    pub fn constant(lr: f32) -> Self {
        Self::new(Decay::Constant, lr, 0, 0)
    }

    /// The learning rate at `step` (0-based).
    pub fn get_lr(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.peak * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f32;
        let progress = ((step - self.warmup) as f32 / span).min(1.0);
        let range = self.peak - self.min_lr;
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Linear => self.min_lr + range * (1.0 - progress),
            Decay::Cosine => self.min_lr + range * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos()),
            Decay::InverseSqrt => {
                self.peak * (self.warmup.max(1) as f32 / (step + 1).max(self.warmup.max(1)) as f32).sqrt()
            }
        }
    }
}

/// Linear warmup then cosine decay, by its PyTorch-style name:
/// `CosineAnnealingLR::with_warmup(peak, warmup, total).get_lr(step)`.
pub struct CosineAnnealingLR;

impl CosineAnnealingLR {
    pub fn with_warmup(peak: f32, warmup: usize, total: usize) -> LrScheduler {
        LrScheduler::new(Decay::Cosine, peak, warmup, total)
    }
}

pub struct LinearLR;

impl LinearLR {
    pub fn with_warmup(peak: f32, warmup: usize, total: usize) -> LrScheduler {
        LrScheduler::new(Decay::Linear, peak, warmup, total)
    }
}

pub struct InverseSqrtLR;

impl InverseSqrtLR {
    pub fn with_warmup(peak: f32, warmup: usize) -> LrScheduler {
        LrScheduler::new(Decay::InverseSqrt, peak, warmup, 0)
    }
}

pub struct ConstantLR;

impl ConstantLR {
    pub fn with_warmup(peak: f32, warmup: usize) -> LrScheduler {
        LrScheduler::new(Decay::Constant, peak, warmup, 0)
    }
}
