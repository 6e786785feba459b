//! 8-bit AdamW: AdamW's update with its moments stored as block-wise 8-bit dynamic codes
//! (Dettmers et al. 2022), about 2 bytes of state a parameter element instead of 8.

use super::adamw8bit_update::{cpu_update, gpu_maps, gpu_update, Step8, WORDS};
use super::quant8::{BLOCK, MIN_8BIT_SIZE};
use super::{check_step, noise_key, AdamW, AdamWConfig, Optimizer, Rule, UpdateRule};
use crate::ops::{float_input, on_device};
use crate::{bail, no_grad, Precision, Result, Tensor};

/// AdamW (same config, same update as `AdamW`: PyTorch's decoupled weight decay and bias
/// correction) whose m and v live between steps as 8-bit codes with one f32 absmax per block of
/// `quant8::BLOCK` elements: m in the signed dynamic map, v in the unsigned one. Each step
/// dequantizes a block, updates m, v and the weight in f32 and requantizes to the nearest code.
/// Parameters under `quant8::MIN_8BIT_SIZE` elements keep f32 moments (an `AdamW` of their own).
///
/// Its state (`Optimizer::state`), parameter by parameter: an 8-bit one has its codes (u32,
/// 2·WORDS words a block: the block's m codes then its v codes, element j in byte j % 4 of word
/// j / 4) and its scales (f32, absmax of m then of v for each block); a small one has AdamW's
/// f32 (m, v) pairs.
pub struct AdamW8bit {
    pub config: AdamWConfig,
    /// The f32 AdamW of the small parameters, given them alone.
    small: AdamW,
    /// (codes, scales) of each parameter, None for a small one; empty before the first step.
    moments: Vec<Option<(Tensor, Tensor)>>,
    /// What `state` returns, rebuilt when the state is made or restored.
    state: Vec<Tensor>,
    decay: Option<Vec<bool>>,
    steps: u64,
}

const NAME: &str = "adamw8bit";

/// Whether a parameter of `n` elements has 8-bit moments.
fn is_8bit(n: usize) -> bool {
    n >= MIN_8BIT_SIZE
}

/// Code words and scales of a parameter of `n` elements.
fn state_sizes(n: usize) -> (usize, usize) {
    let blocks = n.div_ceil(BLOCK);
    (blocks * 2 * WORDS, blocks * 2)
}

impl AdamW8bit {
    pub fn new(config: AdamWConfig) -> AdamW8bit {
        AdamW8bit { config, small: AdamW::new(config), moments: Vec::new(), state: Vec::new(), decay: None, steps: 0 }
    }

    /// The small parameters' positions.
    fn small_ones(params: &[Tensor]) -> Vec<usize> {
        (0..params.len()).filter(|&k| !is_8bit(params[k].numel())).collect()
    }

    fn rebuild_state(&mut self) {
        let mut small = self.small.state().iter();
        self.state.clear();
        for m in &self.moments {
            match m {
                Some((c, s)) => self.state.extend([c.clone(), s.clone()]),
                None => self.state.extend(small.next().cloned()),
            }
        }
    }

    fn step_with(&mut self, params: &[Tensor], grads: &[Tensor], control: Option<&Tensor>) -> Result<()> {
        let Some(device) = check_step(NAME, params, grads, self.decay.as_deref(), control)? else { return Ok(()) };
        if !self.moments.is_empty() {
            let fits = |k: usize, m: &Option<(Tensor, Tensor)>| match m {
                Some((c, _)) => is_8bit(params[k].numel()) && c.numel() == state_sizes(params[k].numel()).0,
                None => !is_8bit(params[k].numel()),
            };
            if self.moments.len() != params.len() || !self.moments.iter().enumerate().all(|(k, m)| fits(k, m)) {
                bail!(Invalid, "{NAME}: the parameters ({}) do not match the state of earlier steps", params.len());
            }
        }
        let small = Self::small_ones(params);
        if !small.is_empty() {
            self.small.config = self.config;
            let decay = self.decay.as_ref().map(|d| small.iter().map(|&k| d[k]).collect());
            if let Some(d) = decay {
                self.small.set_decay_mask(d);
            }
            let (p, g): (Vec<Tensor>, Vec<Tensor>) =
                small.iter().map(|&k| (params[k].clone(), grads[k].clone())).unzip();
            match control {
                Some(c) => self.small.step_controlled(&p, &g, c)?,
                None => self.small.step(&p, &g)?,
            }
        }
        if self.moments.is_empty() {
            self.moments = params
                .iter()
                .map(|p| {
                    let (words, scales) = state_sizes(p.numel());
                    is_8bit(p.numel()).then(|| {
                        (
                            Tensor::zeros_on(&[words], Precision::U32, device),
                            Tensor::zeros_on(&[scales], Precision::FP32, device),
                        )
                    })
                })
                .collect();
            self.rebuild_state();
        }
        self.steps += 1;
        let Rule::AdamW { beta1, beta2, eps, bc1, bc2_sqrt } = self.config.settings(self.steps).rule else {
            unreachable!("AdamWConfig's rule is AdamW")
        };
        let (lr, seed) = (self.config.lr, self.config.seed);
        let steps: Vec<Step8> = (0..params.len())
            .map(|k| Step8 {
                lr,
                wd: if self.decay.as_ref().is_none_or(|m| m[k]) { self.config.weight_decay } else { 0.0 },
                beta1,
                beta2,
                eps,
                bc1,
                bc2_sqrt,
                key: noise_key(seed, k as u32, self.steps),
            })
            .collect();
        let moments = &self.moments;
        no_grad(|| {
            let grads = grads.iter().map(|g| float_input(NAME, g)).collect::<Result<Vec<_>>>()?;
            let each: Vec<(usize, &Tensor, &Tensor)> =
                moments.iter().enumerate().filter_map(|(k, m)| m.as_ref().map(|(c, s)| (k, c, s))).collect();
            on_device(
                NAME,
                device,
                || {
                    let Some(gscale) = super::control_scale(control) else { return Ok(()) };
                    for &(k, c, s) in &each {
                        let (g, mut c, mut s, mut w) = (grads[k].cpu(), c.cpu_mut(), s.cpu_mut(), params[k].cpu_mut());
                        let (c, s) = (c.u32(), s.f32());
                        match params[k].dtype() {
                            Precision::BF16 => cpu_update(w.bf16(), g.f32(), gscale, c, s, &steps[k]),
                            _ => cpu_update(w.f32(), g.f32(), gscale, c, s, &steps[k]),
                        }
                    }
                    Ok(())
                },
                || {
                    let map = gpu_maps()?;
                    for &(k, c, s) in &each {
                        gpu_update(&map, &params[k], &grads[k], c, s, control, &steps[k])?;
                    }
                    Ok(())
                },
            )
        })
    }
}

impl Optimizer for AdamW8bit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    fn set_decay_mask(&mut self, mask: Vec<bool>) {
        self.decay = Some(mask);
    }

    fn step(&mut self, params: &[Tensor], grads: &[Tensor]) -> Result<()> {
        self.step_with(params, grads, None)
    }

    fn step_controlled(&mut self, params: &[Tensor], grads: &[Tensor], control: &Tensor) -> Result<()> {
        self.step_with(params, grads, Some(control))
    }

    fn uncount_step(&mut self) {
        self.steps = self.steps.saturating_sub(1);
        if self.small.steps() > self.steps {
            self.small.uncount_step();
        }
    }

    fn restore(&mut self, params: &[Tensor], state: Vec<Tensor>, steps: u64) -> Result<()> {
        if state.is_empty() && steps == 0 {
            *self = AdamW8bit { decay: self.decay.take(), ..AdamW8bit::new(self.config) };
            return Ok(());
        }
        let need: usize = params.iter().map(|p| if is_8bit(p.numel()) { 2 } else { 1 }).sum();
        if state.len() != need {
            bail!(
                Invalid,
                "{NAME}: saved state has {} tensors, the model's {} parameters need {need}",
                state.len(),
                params.len()
            );
        }
        let mut saved = state.into_iter();
        let (mut moments, mut small) = (Vec::new(), Vec::new());
        for (k, p) in params.iter().enumerate() {
            if !is_8bit(p.numel()) {
                small.extend(saved.next());
                moments.push(None);
                continue;
            }
            let (c, s) = (saved.next().expect("counted"), saved.next().expect("counted"));
            let (words, scales) = state_sizes(p.numel());
            if c.dtype() != Precision::U32 || c.numel() != words || s.dtype() != Precision::FP32 || s.numel() != scales
            {
                bail!(
                    Invalid,
                    "{NAME}: saved state of parameter {k} ({} {:?}, {} {:?}) does not fit its shape {:?}: expected u32 [{words}] and f32 [{scales}]",
                    c.dtype().name(),
                    c.shape(),
                    s.dtype().name(),
                    s.shape(),
                    p.shape()
                );
            }
            // Exact copies: the state is updated in place and must not alias what was given.
            let d = p.device();
            moments.push(Some((
                Tensor::from_u32_on(&c.to_vec_u32(), &[words], d)?,
                Tensor::from_f32_on(&s.to_vec(), &[scales], d)?,
            )));
        }
        let small_params: Vec<Tensor> = Self::small_ones(params).into_iter().map(|k| params[k].clone()).collect();
        let mut fresh = AdamW::new(self.config);
        if !small_params.is_empty() {
            fresh.restore(&small_params, small, steps)?;
        }
        (self.small, self.moments, self.steps) = (fresh, moments, steps);
        self.rebuild_state();
        Ok(())
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> &[Tensor] {
        &self.state
    }
}
