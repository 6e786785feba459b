//! The `Optimizer` trait, and `Stateful`: the one implementation behind Lion, AdamW and Sophia,
//! which differ only in their config and its per-step `Settings`.

use super::{Settings, Slots};
use crate::{Result, Tensor};

/// What the trainer needs of an optimizer: it holds a `Box<dyn Optimizer>`.
pub trait Optimizer: Send {
    /// "lion", "adamw", "adamw8bit" or "sophia": names the optimizer in errors.
    fn name(&self) -> &'static str;

    /// Sets the learning rate for the next steps (schedulers call this every step).
    fn set_lr(&mut self, lr: f32);

    /// Weight decay only where `mask[k]` is true, by position in the lists given to `step`.
    /// Without a mask every parameter decays.
    fn set_decay_mask(&mut self, mask: Vec<bool>);

    /// One step: every parameter (f32 or bf16, any view) is updated in place from its f32
    /// gradient. The state is made on the first step; later steps must pass the same list.
    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<()>;

    /// `step` under a step control from `step_control`: gradients scaled by its clipping
    /// factor, and no change at all when it marks the step as skipped (a NaN/Inf loss or
    /// gradient). The control is read where the update runs: the host does not wait for it.
    /// A step that was skipped should be handed back with `uncount_step`.
    fn step_controlled(&mut self, params: &[Tensor], grads: &[Tensor], control: &Tensor) -> Result<()>;

    /// Forgets the last step in the step count (one its control skipped).
    fn uncount_step(&mut self);

    /// Restores `state()` and `steps()` saved from an optimizer over the same `params`.
    fn restore(&mut self, params: &[Tensor], state: Vec<Tensor>, steps: u64) -> Result<()>;

    /// Steps taken so far.
    fn steps(&self) -> u64;

    /// The state, in the order `restore` takes it back (empty before a step): for Lion, AdamW and
    /// Sophia one f32 tensor a parameter, `width` values an element; for AdamW8bit see its doc.
    /// Checkpoints save each tensor as it is (dtype included), so restoring is exact.
    fn state(&self) -> &[Tensor];

    /// Whether the next step wants a Hessian estimate first (`update_hessian`): Sophia every
    /// k steps; never for the others.
    fn wants_hessian(&self) -> bool {
        false
    }

    /// Folds a diagonal Hessian estimate into the state: `grads` are those of the mean loss
    /// over `tokens` tokens with labels sampled from the model (Sophia-G's estimator).
    /// With `control` (from `step_control`) they are scaled by control[0] and nothing changes
    /// where control[1] is 0. A no-op for optimizers without a Hessian.
    fn update_hessian(
        &mut self,
        _params: &[Tensor],
        _grads: &[Tensor],
        _tokens: usize,
        _control: Option<&Tensor>,
    ) -> Result<()> {
        Ok(())
    }
}

/// An optimizer's config: its name, state width and the settings of step `t` (1 for the first).
pub trait UpdateRule: Copy + Send + 'static {
    const NAME: &'static str;
    /// f32 state words per parameter element.
    const WIDTH: usize;
    fn set_lr(&mut self, lr: f32);
    fn settings(&self, t: u64) -> Settings;

    /// Whether step `t` starts with a Hessian estimate (Sophia).
    fn wants_hessian(&self, _t: u64) -> bool {
        false
    }

    /// The settings that fold a Hessian estimate of `tokens` tokens into the state (Sophia).
    fn hessian_settings(&self, _tokens: f32) -> Option<Settings> {
        None
    }
}

/// An optimizer with per-element f32 state: `Lion`, `AdamW` and `Sophia` are this over their configs.
pub struct Stateful<C> {
    pub config: C,
    slots: Slots,
}

impl<C: UpdateRule> Stateful<C> {
    pub fn new(config: C) -> Stateful<C> {
        Stateful { config, slots: Slots::default() }
    }

    fn settings(&self) -> impl Fn(u64) -> Settings {
        let c = self.config;
        move |t| c.settings(t)
    }
}

impl<C: UpdateRule> Optimizer for Stateful<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn set_lr(&mut self, lr: f32) {
        self.config.set_lr(lr);
    }

    fn set_decay_mask(&mut self, mask: Vec<bool>) {
        self.slots.decay = Some(mask);
    }

    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<()> {
        let settings = self.settings();
        self.slots.step(C::NAME, params, grads, None, true, settings)
    }

    fn step_controlled(&mut self, params: &[Tensor], grads: &[Tensor], control: &Tensor) -> Result<()> {
        let settings = self.settings();
        self.slots.step(C::NAME, params, grads, Some(control), true, settings)
    }

    fn uncount_step(&mut self) {
        self.slots.uncount_step();
    }

    fn restore(&mut self, params: &[Tensor], state: Vec<Tensor>, steps: u64) -> Result<()> {
        self.slots.restore(C::NAME, params, state, steps, C::WIDTH)
    }

    fn steps(&self) -> u64 {
        self.slots.steps
    }

    fn state(&self) -> &[Tensor] {
        &self.slots.state
    }

    fn wants_hessian(&self) -> bool {
        self.config.wants_hessian(self.slots.steps + 1)
    }

    fn update_hessian(
        &mut self,
        params: &[Tensor],
        grads: &[Tensor],
        tokens: usize,
        control: Option<&Tensor>,
    ) -> Result<()> {
        let c = self.config;
        if c.hessian_settings(1.0).is_none() {
            return Ok(());
        }
        let settings = move |_t: u64| c.hessian_settings(tokens as f32).expect("checked above");
        // The same checks and dispatch as a step, with a rule that changes only the state.
        self.slots.step(C::NAME, params, grads, control, false, settings)
    }
}
