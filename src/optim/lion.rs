//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), with the update
//! rule and β names exactly as the spec writes them.

use super::{Rule, Settings, Slots};
use crate::{Result, Tensor};

/// Lion hyper-parameters. The defaults are the spec's training configuration.
#[derive(Clone, Copy, Debug)]
pub struct LionConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
    /// Seed of the stochastic rounding of BF16 parameters.
    pub seed: u64,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig { lr: 3e-4, beta1: 0.9, beta2: 0.99, weight_decay: 0.1, seed: 0 }
    }
}

/// Lion, one f32 momentum per parameter element. Per element, as the spec writes it:
/// ```text
/// update = sign(β2·m + (1 - β2)·g)
/// m      = β1·m + (1 - β1)·g
/// w      = w - lr·update - lr·wd·w
/// ```
/// Note: the paper (Algorithm 2) names the betas the other way round: it interpolates with
/// β1 (c = β1·m + (1-β1)·g) and tracks the momentum with β2 (m = β2·m + (1-β2)·g), with
/// defaults β1 = 0.9, β2 = 0.99. With the spec's names the same behaviour needs
/// beta1 = 0.99, beta2 = 0.9; the spec's defaults (0.9, 0.99) give the swapped variant.
/// Weight decay is decoupled and uses the weight before the step, as in the paper.
pub struct Lion {
    pub config: LionConfig,
    slots: Slots,
}

impl Lion {
    pub fn new(config: LionConfig) -> Lion {
        Lion { config, slots: Slots::default() }
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
        self.slots.step("lion", params, grads, None, settings)
    }

    fn settings(&self) -> impl Fn(u64) -> Settings {
        let c = self.config;
        move |_| Settings {
            rule: Rule::Lion { beta1: c.beta1, beta2: c.beta2 },
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
        self.slots.step("lion", params, grads, Some(control), settings)
    }

    /// Forgets the last step in the step count (one its control skipped).
    pub fn uncount_step(&mut self) {
        self.slots.uncount_step();
    }

    /// Restores `state()` and `steps()` saved from an optimizer over the same `params`.
    pub fn restore(&mut self, params: &[Tensor], state: Vec<Tensor>, steps: u64) -> Result<()> {
        self.slots.restore("lion", params, state, steps, 1)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.slots.steps
    }

    /// The momentum of each parameter: f32, flat, one value per element (empty before a step).
    pub fn state(&self) -> &[Tensor] {
        &self.slots.state
    }
}
