//! Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).
//! The mask is a hash of (seed, index), so backward recomputes it instead of storing it.

use super::{float_input, grid_for, on_device};
use crate::autograd::record;
use crate::device::cpu::{self, CHUNK};
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel =
    Kernel { name: "dropout", source: include_str!("dropout.wgsl"), params: &DropoutParams::LAYOUT, codes: &[] };

kernel_params! {
    /// dropout.wgsl's Params.
    pub(crate) struct DropoutParams {
        n: u32,
        x_off: u32,
        seed_lo: u32,
        seed_hi: u32,
        threshold: u32,
        scale: f32,
        vec: u32,
    }
}

/// The same hash as dropout.wgsl.
#[inline(always)]
fn hash(i: u32, lo: u32, hi: u32) -> u32 {
    let mut h = i.wrapping_mul(747796405).wrapping_add(lo);
    h = ((h >> ((h >> 28) + 4)) ^ h).wrapping_mul(277803737);
    h ^= h >> 22;
    h = (h ^ hi).wrapping_mul(2654435769);
    h ^ (h >> 16)
}

fn masked(op: &'static str, x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let n = x.numel();
    let threshold = (p as f64 * 4294967296.0).min(4294967295.0) as u32;
    let scale = 1.0 / (1.0 - p);
    let (lo, hi) = (seed as u32, (seed >> 32) as u32);
    on_device(
        op,
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            // Over zipped slices, and the mask as bits (x·scale, or +0 where dropped), not a
            // branch, which a random mask mispredicts (docs/PERFORMANCE.md).
            let out = cpu::par_new(n, CHUNK, |c, o| {
                let (base, x) = ((c * CHUNK) as u32, &xv[c * CHUNK..c * CHUNK + o.len()]);
                cpu::simd(
                    #[inline(always)]
                    || {
                        for ((o, &x), i) in o.iter_mut().zip(x).zip(base..) {
                            let keep = ((hash(i, lo, hi) >= threshold) as u32).wrapping_neg();
                            *o = f32::from_bits((x * scale).to_bits() & keep);
                        }
                    },
                )
            });
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let vec = n.is_multiple_of(4) && x.offset().is_multiple_of(4);
            let params = DropoutParams {
                n: to_u32("dropout", "elements", n)?,
                x_off: to_u32("dropout", "offset", x.offset())?,
                seed_lo: lo,
                seed_hi: hi,
                threshold,
                scale,
                vec: vec as u32,
            };
            ctx.dispatch(&KERNEL, "dropout", &params, &[x.gpu(), &out], grid_for(n.div_ceil(4)))?;
            Ok(Tensor::from_gpu(out, x.shape(), Precision::FP32))
        },
    )
}

/// Training-time dropout with probability `p` and mask seed `seed`; p = 0 returns x.
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        bail!(Invalid, "dropout: p must be in [0, 1), got {p}");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let x = float_input("dropout", x)?;
    let out = masked("dropout", &x, p, seed)?;
    Ok(record("dropout", out, &[&x], move |dy| Ok(vec![Some(masked("dropout_backward", dy, p, seed)?)])))
}
