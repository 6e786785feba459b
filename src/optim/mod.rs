//! Optimizers that update parameters in place: Lion (the β names of IronTensor's API: see lion.rs), AdamW,
//! 8-bit AdamW, Sophia-G, and gradient clipping. BF16 parameters are updated in f32 and stored with stochastic rounding.

mod adamw;
mod adamw8bit;
mod adamw8bit_update;
pub mod clip;
mod gpu_update;
mod lion;
pub mod quant8;
mod rounding;
mod sophia;
mod stateful;

pub use adamw::{AdamW, AdamWConfig};
pub use adamw8bit::AdamW8bit;
pub use clip::{clip_grad_norm, global_norm, step_control, step_control_scaled};
pub use lion::{Lion, LionConfig};
pub use rounding::stochastic_round;
pub use sophia::{Sophia, SophiaConfig};
pub use stateful::{Optimizer, Stateful, UpdateRule};

use gpu_update::gpu_update;
use rounding::{noise_key, Elem};

use crate::device::cpu::CHUNK;
use crate::device::gpu::{kernel_params, op_codes};
use crate::device::gpu::{Kernel, KernelParams};
use crate::ops::{flat, float_input, on_device, same_device};
use crate::{bail, no_grad, Device, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel = Kernel {
    name: "optim",
    source: include_str!("optim.wgsl"),
    params: &OptimParams::LAYOUT,
    codes: &[RuleCode::WGSL],
};

op_codes! {
    /// The update rule (`p.rule` in optim.wgsl, its RULE_* consts).
    enum RuleCode {
        Lion = 0 => RULE_LION,
        AdamW = 1 => RULE_ADAMW,
        Sophia = 2 => RULE_SOPHIA,
        SophiaHessian = 3 => RULE_SOPHIA_HESSIAN,
    }
}

kernel_params! {
    /// optim.wgsl's Params.
    pub(crate) struct OptimParams {
        n: u32,
        g_off: u32,
        key: u32,
        segments: u32,
        bf16: u32,
        rule: u32,
        lr: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        bc1: f32,
        bc2_sqrt: f32,
        use_ctl: u32,
        ctl_off: u32,
        rho: f32,
        tokens: f32,
    }
}

/// Every WGSL source the optimizers use (`crate::kernels` lists them with the ops').
pub fn kernels() -> Vec<&'static Kernel> {
    vec![&KERNEL, &clip::KERNEL, &adamw8bit_update::KERNEL]
}

/// A per-element update rule. `Rule::apply` and optim.wgsl's `rule` are the same formulas.
#[derive(Clone, Copy, Debug)]
enum Rule {
    /// Lion: update = sign(β2·m + (1-β2)·g), m = β1·m + (1-β1)·g.
    Lion { beta1: f32, beta2: f32 },
    /// Adam with bias correction: bc1 = 1 - β1^t, bc2_sqrt = sqrt(1 - β2^t).
    AdamW { beta1: f32, beta2: f32, eps: f32, bc1: f32, bc2_sqrt: f32 },
    /// Sophia: m = β1·m + (1-β1)·g, update = clip(m / max(ρ·h, ε), 1); h is left as it is.
    Sophia { beta1: f32, rho: f32, eps: f32 },
    /// Sophia's Hessian EMA: h = β2·h + (1-β2)·tokens·g²; the weight and m are left as they are.
    SophiaHessian { beta2: f32, tokens: f32 },
}

impl Rule {
    /// f32 state words per parameter element: Lion m; AdamW (m, v) and Sophia (m, h) interleaved.
    fn width(self) -> usize {
        match self {
            Rule::Lion { .. } => 1,
            Rule::AdamW { .. } | Rule::Sophia { .. } | Rule::SophiaHessian { .. } => 2,
        }
    }

    /// (code, beta1, beta2, eps, bc1, bc2_sqrt, rho, tokens) for the kernel.
    fn params(self) -> (RuleCode, [f32; 7]) {
        match self {
            Rule::Lion { beta1, beta2 } => (RuleCode::Lion, [beta1, beta2, 0.0, 1.0, 1.0, 0.0, 0.0]),
            Rule::AdamW { beta1, beta2, eps, bc1, bc2_sqrt } => {
                (RuleCode::AdamW, [beta1, beta2, eps, bc1, bc2_sqrt, 0.0, 0.0])
            }
            Rule::Sophia { beta1, rho, eps } => (RuleCode::Sophia, [beta1, 0.0, eps, 1.0, 1.0, rho, 0.0]),
            Rule::SophiaHessian { beta2, tokens } => {
                (RuleCode::SophiaHessian, [0.0, beta2, 0.0, 1.0, 1.0, 0.0, tokens])
            }
        }
    }
}

/// Per-parameter f32 state, the weight-decay mask and the step count, shared by the optimizers.
#[derive(Default)]
struct Slots {
    state: Vec<Tensor>,
    decay: Option<Vec<bool>>,
    steps: u64,
}

impl Slots {
    /// Takes back the step count of a step that its control skipped.
    fn uncount_step(&mut self) {
        self.steps = self.steps.saturating_sub(1);
    }

    /// Takes state saved from `state` (a checkpoint), checking it against `params`.
    fn restore(&mut self, op: &str, params: &[Tensor], state: Vec<Tensor>, steps: u64, width: usize) -> Result<()> {
        if state.is_empty() && steps == 0 {
            self.state.clear();
            self.steps = 0;
            return Ok(());
        }
        if state.len() != params.len() {
            bail!(Invalid, "{op}: saved state is for {} parameters, the model has {}", state.len(), params.len());
        }
        for (k, (p, s)) in params.iter().zip(&state).enumerate() {
            if s.dtype() != Precision::FP32 || s.numel() != p.numel() * width {
                bail!(
                    Invalid,
                    "{op}: saved state {k} ({:?}) does not fit parameter {k} of shape {:?}",
                    s.shape(),
                    p.shape()
                );
            }
        }
        let state: Vec<Tensor> =
            state.iter().zip(params).map(|(s, p)| s.to_device(p.device())).collect::<Result<_>>()?;
        self.state = flat::pack(&state)?; // one buffer, as a fresh state is made
        self.steps = steps;
        Ok(())
    }

    /// Checks every parameter, gradient and state first, then updates each parameter in place.
    /// `settings` gets the step number (1 for the first step); `count`: this is a step (not
    /// Sophia's Hessian update, which runs the same way but is no step). With `control` (see
    /// `step_control`), the gradients are scaled by control[0] and nothing changes where
    /// control[1] is 0; both are read where the update runs, so the host need not wait for them.
    fn step(
        &mut self,
        op: &'static str,
        params: &[Tensor],
        grads: &[Tensor],
        control: Option<&Tensor>,
        count: bool,
        settings: impl Fn(u64) -> Settings,
    ) -> Result<()> {
        let width = settings(self.steps + 1).rule.width();
        let Some(device) = check_step(op, params, grads, self.decay.as_deref(), control)? else { return Ok(()) };
        if self.state.is_empty() {
            let shapes: Vec<[usize; 1]> = params.iter().map(|p| [p.numel() * width]).collect();
            let shapes: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
            // One buffer for all: the GPU update then covers every parameter in one dispatch.
            self.state = flat::zeros(&shapes, Precision::FP32, device);
        }
        if self.state.len() != params.len() {
            bail!(Invalid, "{op}: state was made for {} parameters, got {}", self.state.len(), params.len());
        }
        for (k, (p, s)) in params.iter().zip(&self.state).enumerate() {
            if s.numel() != p.numel() * width || s.device() != p.device() {
                bail!(
                    Invalid,
                    "{op}: parameter {k} ({:?} on {}) does not match its state from earlier steps",
                    p.shape(),
                    p.device().name()
                );
            }
        }
        self.steps += count as u64;
        let set = settings(self.steps);
        let hypers: Vec<Hyper> = (0..params.len())
            .map(|k| Hyper {
                wd: if self.decay.as_ref().is_none_or(|m| m[k]) { set.weight_decay } else { 0.0 },
                key: noise_key(set.seed, k as u32, self.steps),
            })
            .collect();
        no_grad(|| {
            let grads = grads.iter().map(|g| float_input(op, g)).collect::<Result<Vec<_>>>()?;
            let state = &self.state;
            on_device(
                op,
                device,
                || {
                    let Some(gscale) = control_scale(control) else { return Ok(()) };
                    for (((w, g), s), h) in params.iter().zip(&grads).zip(state).zip(&hypers) {
                        let (gr, mut sw, mut ww) = (g.cpu(), s.cpu_mut(), w.cpu_mut());
                        match w.dtype() {
                            Precision::BF16 => cpu_update(ww.bf16(), gr.f32(), gscale, sw.f32(), &set, h),
                            _ => cpu_update(ww.f32(), gr.f32(), gscale, sw.f32(), &set, h),
                        }
                    }
                    Ok(())
                },
                || gpu_update(params, &grads, state, control, &set, &hypers),
            )
        })
    }
}

/// The rules' updates of one element: the new weight from w and g, the element's state `s`
/// updated in place; `wd` is the decoupled weight decay (0 for parameters that do not decay).
#[inline(always)]
fn lion(w: f32, g: f32, s: &mut [f32], (lr, wd): (f32, f32), (beta1, beta2): (f32, f32)) -> f32 {
    let m = s[0];
    let c = beta2 * m + (1.0 - beta2) * g;
    // torch.sign: 0 stays 0 (f32::signum would give ±1).
    let u = if c > 0.0 {
        1.0
    } else if c < 0.0 {
        -1.0
    } else {
        0.0
    };
    s[0] = beta1 * m + (1.0 - beta1) * g;
    w - lr * u - lr * wd * w
}

#[inline(always)]
fn adamw(w: f32, g: f32, s: &mut [f32], (lr, wd): (f32, f32), h: (f32, f32, f32, f32, f32)) -> f32 {
    let (beta1, beta2, eps, bc1, bc2_sqrt) = h;
    let w1 = w - lr * wd * w;
    let m = beta1 * s[0] + (1.0 - beta1) * g;
    let v = beta2 * s[1] + (1.0 - beta2) * g * g;
    s[0] = m;
    s[1] = v;
    w1 - lr * (m / bc1) / (v.sqrt() / bc2_sqrt + eps)
}

#[inline(always)]
fn sophia(w: f32, g: f32, s: &mut [f32], (lr, wd): (f32, f32), (beta1, rho, eps): (f32, f32, f32)) -> f32 {
    let w1 = w - lr * wd * w;
    let m = beta1 * s[0] + (1.0 - beta1) * g;
    s[0] = m;
    w1 - lr * (m / (rho * s[1]).max(eps)).clamp(-1.0, 1.0)
}

#[inline(always)]
fn sophia_hessian(w: f32, g: f32, s: &mut [f32], (beta2, tokens): (f32, f32)) -> f32 {
    s[1] = beta2 * s[1] + (1.0 - beta2) * tokens * g * g;
    w
}

/// The checks before any step changes anything: as many gradients (and decay flags) as
/// parameters, f32 or bf16 of equal shapes on one device, no gradient sharing its parameter's
/// storage, and a step control of f32 [4] on that device. The device; None without parameters.
/// The gradient scale a step control (`step_control`) sets on the CPU: its clipping factor, 1
/// without one, or None when it skips the step.
pub(super) fn control_scale(control: Option<&Tensor>) -> Option<f32> {
    match control.map(|c| c.to_vec()) {
        Some(c) if c[1] == 0.0 => None,
        Some(c) => Some(c[0]),
        None => Some(1.0),
    }
}

fn check_step(
    op: &str,
    params: &[Tensor],
    grads: &[Tensor],
    decay: Option<&[bool]>,
    control: Option<&Tensor>,
) -> Result<Option<Device>> {
    if params.len() != grads.len() {
        bail!(Invalid, "{op}: {} parameters but {} gradients", params.len(), grads.len());
    }
    if let Some(mask) = decay {
        if mask.len() != params.len() {
            bail!(Invalid, "{op}: the weight-decay mask has {} flags for {} parameters", mask.len(), params.len());
        }
    }
    if let Some(c) = control {
        if c.dtype() != Precision::FP32 || c.numel() != 4 || params.first().is_some_and(|p| p.device() != c.device()) {
            bail!(Invalid, "{op}: the step control must be f32 [4] on the parameters' device, got {:?}", c.shape());
        }
    }
    let Some(device) = params.first().map(|p| p.device()) else { return Ok(None) };
    same_device(op, &params.iter().chain(grads).collect::<Vec<_>>())?;
    for (k, (p, g)) in params.iter().zip(grads).enumerate() {
        if p.dtype() == Precision::U32 || g.dtype() == Precision::U32 {
            bail!(
                Dtype,
                "{op}: parameter {k} and its gradient must be f32 or bf16, got {} and {}",
                p.dtype().name(),
                g.dtype().name()
            );
        }
        if p.shape() != g.shape() {
            bail!(Shape, "{op}: parameter {k} is {:?} but its gradient is {:?}", p.shape(), g.shape());
        }
        if p.shares_storage(g) {
            bail!(Invalid, "{op}: parameter {k} and its gradient share storage");
        }
    }
    Ok(Some(device))
}

/// One step's settings, from an optimizer's config (`UpdateRule::settings`).
pub struct Settings {
    rule: Rule,
    lr: f32,
    weight_decay: f32,
    seed: u64,
}

/// What differs between parameters in one step's update.
struct Hyper {
    wd: f32,
    /// Stochastic-rounding key for this (seed, parameter, step).
    key: u32,
}

/// The update with the gradient scaled by `gscale` (the clipping factor, 1 without clipping).
fn cpu_update<T: Elem>(w: &mut [T], g: &[f32], gscale: f32, s: &mut [f32], set: &Settings, h: &Hyper) {
    let (k, lw) = (set.rule.width(), (set.lr, h.wd));
    w.par_chunks_mut(CHUNK).zip(s.par_chunks_mut(CHUNK * k)).enumerate().for_each(|(c, (wc, sc))| {
        let (gc, at) = (&g[c * CHUNK..c * CHUNK + wc.len()], (h.key, c * CHUNK));
        // A loop per rule with only numbers in it: with the rule's match inside, the loop did
        // not vectorise (an AdamW step took 29-33 ms on shakespeare's 12.2M parameters).
        match set.rule {
            Rule::Lion { beta1, beta2 } => {
                each::<T, 1>(wc, gc, sc, at, move |w, g, s| lion(w, g * gscale, s, lw, (beta1, beta2)))
            }
            Rule::AdamW { beta1, beta2, eps, bc1, bc2_sqrt } => {
                let hp = (beta1, beta2, eps, bc1, bc2_sqrt);
                each::<T, 2>(wc, gc, sc, at, move |w, g, s| adamw(w, g * gscale, s, lw, hp))
            }
            Rule::Sophia { beta1, rho, eps } => {
                each::<T, 2>(wc, gc, sc, at, move |w, g, s| sophia(w, g * gscale, s, lw, (beta1, rho, eps)))
            }
            Rule::SophiaHessian { beta2, tokens } => {
                each::<T, 2>(wc, gc, sc, at, move |w, g, s| sophia_hessian(w, g * gscale, s, (beta2, tokens)))
            }
        }
    });
}

/// w[j] = f(w[j], g[j], the K state words of j) over a chunk whose first element is `first`
/// (the stochastic rounding's index), in `cpu::simd`.
#[inline(always)]
fn each<T: Elem, const K: usize>(
    w: &mut [T],
    g: &[f32],
    s: &mut [f32],
    (key, first): (u32, usize),
    f: impl Fn(f32, f32, &mut [f32]) -> f32,
) {
    crate::device::cpu::simd(
        #[inline(always)]
        || {
            for (j, ((w, &g), s)) in w.iter_mut().zip(g).zip(s.chunks_exact_mut(K)).enumerate() {
                let new = f(w.load(), g, s);
                w.store(new, key, (first + j) as u32);
            }
        },
    )
}
