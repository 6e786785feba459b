//! Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p).
//! The mask is a hash of (seed, index), so backward recomputes it instead of storing it.

use super::{float_input, grid_for, on_device};
use crate::autograd::record;
use crate::device::cpu::par_fill;
use crate::device::gpu::{self, Kernel};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel = Kernel { name: "dropout", source: include_str!("dropout.wgsl") };

/// The same hash as dropout.wgsl.
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
            let mut out = vec![0.0; n];
            par_fill(&mut out, |i| if hash(i as u32, lo, hi) >= threshold { xv[i] * scale } else { 0.0 });
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let params = [n as u32, x.offset() as u32, lo, hi, threshold, scale.to_bits()];
            ctx.dispatch(&KERNEL, "dropout", &params, &[x.gpu(), &out], grid_for(n));
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
