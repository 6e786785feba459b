//! Stochastic rounding of BF16 parameters: an update rounds up or down at random, with the
//! probability that keeps the expected value, from a hash of (seed, stream, step, element).

use super::{OptimParams, KERNEL};
use crate::device::cpu::CpuBuffer;
use crate::device::gpu::{self, to_u32};
use crate::ops::{grid_for, on_device};
use crate::precision::f32_to_bf16_bits;
use crate::{bail, Precision, Result, Tensor};
use half::bf16;
use rayon::prelude::*;

/// A parameter element as stored: f32 as is, bf16 rounded stochastically.
pub(super) trait Elem: Send {
    fn load(&self) -> f32;
    fn store(&mut self, v: f32, key: u32, i: u32);
}

impl Elem for f32 {
    fn load(&self) -> f32 {
        *self
    }
    fn store(&mut self, v: f32, _key: u32, _i: u32) {
        *self = v;
    }
}

impl Elem for bf16 {
    fn load(&self) -> f32 {
        self.to_f32()
    }
    fn store(&mut self, v: f32, key: u32, i: u32) {
        *self = bf16::from_bits(round_bf16(v, noise(key, i)));
    }
}

/// PCG-style 32-bit hash (Jarzynski & Olano 2020); the WGSL prelude has the same function.
fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// One key per (seed, stream, step): the noise of element i is then `noise(key, i)`.
pub(super) fn noise_key(seed: u64, stream: u32, step: u64) -> u32 {
    let s = pcg(seed as u32 ^ pcg((seed >> 32) as u32));
    pcg(pcg(s ^ stream) ^ step as u32)
}

fn noise(key: u32, i: u32) -> u32 {
    pcg(pcg(i) ^ key)
}

/// bf16 bits of x rounded up or down at random: up with probability equal to the dropped
/// fraction (the low 16 bits of r decide), so the expected value is x. Inf and NaN are kept.
fn round_bf16(x: f32, r: u32) -> u16 {
    let b = x.to_bits();
    if b & 0x7f80_0000 == 0x7f80_0000 {
        return f32_to_bf16_bits(x);
    }
    // Adding to the magnitude bits carries into the exponent as it should; no u32 overflow.
    ((b + (r & 0xffff)) >> 16) as u16
}

/// `x` (f32) rounded to BF16 stochastically, deterministic for `seed` on every device.
/// The rounding the optimizers use on BF16 parameters, as an op for tests and tools.
pub fn stochastic_round(x: &Tensor, seed: u64) -> Result<Tensor> {
    crate::autograd::no_backward("stochastic_round", &[x])?;
    if x.dtype() != Precision::FP32 {
        bail!(Dtype, "stochastic_round: expects f32, got {}", x.dtype().name());
    }
    let key = noise_key(seed, 0, 0);
    let n = x.numel();
    on_device(
        "stochastic_round",
        x.device(),
        || {
            let r = x.cpu();
            let v: Vec<bf16> = r
                .f32()
                .par_iter()
                .enumerate()
                .map(|(i, &v)| bf16::from_bits(round_bf16(v, noise(key, i as u32))))
                .collect();
            Ok(Tensor::from_cpu(CpuBuffer::BF16(v), x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 2);
            let params = OptimParams {
                n: to_u32("round_sr", "elements", n)?,
                g_off: to_u32("round_sr", "offset", x.offset())?,
                key,
                ..Default::default()
            };
            ctx.dispatch(&KERNEL, "round_sr", &params, &[&out, x.gpu()], grid_for(n.div_ceil(2)))?;
            Ok(Tensor::from_gpu(out, x.shape(), Precision::BF16))
        },
    )
}
