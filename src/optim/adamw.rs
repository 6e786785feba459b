//! AdamW (Loshchilov & Hutter) with PyTorch's semantics: w -= lr·wd·w, then the
//! bias-corrected Adam step.

use super::{Rule, Settings, Slots};
use crate::{Result, Tensor};

/// AdamW hyper-parameters; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Seed of the stochastic rounding of BF16 parameters.
    pub seed: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, seed: 0 }
    }
}

/// AdamW with f32 first and second moments per parameter element. At step t:
/// ```text
/// w = w - lr·wd·w
/// m = β1·m + (1 - β1)·g;   v = β2·v + (1 - β2)·g²
/// w = w - lr · (m / (1 - β1^t)) / (sqrt(v) / sqrt(1 - β2^t) + eps)
/// ```
pub struct AdamW {
    pub config: AdamWConfig,
    slots: Slots,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> AdamW {
        AdamW { config, slots: Slots::default() }
    }

    /// Sets the learning rate for the next steps (schedulers call this every step).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// Weight decay only where `mask[k]` is true, by position in the lists given to `step`.
    /// Without a mask every parameter decays.
    pub fn set_decay_mask(&mut self, mask: Vec<bool>) {
        self.slots.decay = Some(mask);
    }

    /// One step: every parameter (f32 or bf16, any view) is updated in place from its f32
    /// gradient. The state is made on the first step; later steps must pass the same list.
    pub fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<()> {
        let settings = self.settings();
        self.slots.step("adamw", params, grads, None, settings)
    }

    fn settings(&self) -> impl Fn(u64) -> Settings {
        let c = self.config;
        move |t: u64| Settings {
            rule: Rule::AdamW {
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                bc1: (1.0 - (c.beta1 as f64).powf(t as f64)) as f32,
                bc2_sqrt: (1.0 - (c.beta2 as f64).powf(t as f64)).sqrt() as f32,
            },
            lr: c.lr,
            weight_decay: c.weight_decay,
            seed: c.seed,
        }
    }

    /// `step` under a step control from `step_control`: gradients scaled by its clipping
    /// factor, and no change at all when it marks the step as skipped (a NaN/Inf loss or
    /// gradient). The control is read where the update runs: the host does not wait for it.
    /// A step that was skipped should be handed back with `uncount_step`.
    pub fn step_controlled(&mut self, params: &[Tensor], grads: &[Tensor], control: &Tensor) -> Result<()> {
        let settings = self.settings();
        self.slots.step("adamw", params, grads, Some(control), settings)
    }

    /// Forgets the last step in the step count (one its control skipped).
    pub fn uncount_step(&mut self) {
        self.slots.uncount_step();
    }

    /// Restores `state()` and `steps()` saved from an optimizer over the same `params`.
    pub fn restore(&mut self, params: &[Tensor], state: Vec<Tensor>, steps: u64) -> Result<()> {
        self.slots.restore("adamw", params, state, steps, 2)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.slots.steps
    }

    /// The moments of each parameter: f32, flat, (m, v) interleaved per element
    /// (empty before a step).
    pub fn state(&self) -> &[Tensor] {
        &self.slots.state
    }
}
