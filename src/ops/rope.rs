//! Rotary position embedding (Hugging Face Llama's rotate-half convention) and its backward.

use super::{float_input, grid_for, on_device};
use crate::autograd::record;
use crate::device::cpu::par_rows;
use crate::device::gpu::{self, Kernel};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel = Kernel { name: "rope", source: include_str!("rope.wgsl") };

/// x: [B, T, H, D] (D even) -> [B, T, H, D] (f32). Position of token t is `pos_offset + t`.
/// For i < D/2: angle = pos · base^(-2i/D),
/// out[i] = x[i]·cos - x[i+D/2]·sin, out[i+D/2] = x[i+D/2]·cos + x[i]·sin.
/// Angles are accurate to ~1e-5 rad for positions below 65536 (see `turn_table`).
pub fn rope(x: &Tensor, base: f32, pos_offset: usize) -> Result<Tensor> {
    let x = float_input("rope", x)?;
    let &[_, t, _, d] = x.shape() else {
        bail!(Shape, "rope: x must be [B, T, H, D], got shape {:?}", x.shape());
    };
    if d == 0 || d % 2 == 1 {
        bail!(Shape, "rope: head dim D must be even and > 0, got D = {d} in shape {:?}", x.shape());
    }
    if !(base.is_finite() && base > 0.0) {
        bail!(Invalid, "rope: base must be finite and > 0, got {base}");
    }
    if pos_offset + t > u32::MAX as usize {
        bail!(Invalid, "rope: positions up to {} do not fit in u32", pos_offset + t);
    }
    let turns = turn_table(base, d);
    let out = rotate("rope", &x, &turns, pos_offset, 1.0)?;
    Ok(record("rope", out, &[&x], move |dy| {
        let dy = float_input("rope backward", dy)?;
        Ok(vec![Some(rotate("rope_backward", &dy, &turns, pos_offset, -1.0)?)])
    }))
}

/// freq_i / 2π for i < D/2, each split as hi + lo with hi rounded to 8 significant bits
/// (computed in f64). pos · hi is then exact in f32 for pos < 2^16, so the whole turns can be
/// dropped exactly and the angle never carries the f32 rounding of a large pos · freq.
fn turn_table(base: f32, d: usize) -> Vec<f32> {
    let mut table = Vec::with_capacity(d);
    for i in 0..d / 2 {
        let turns = (base as f64).powf(-2.0 * i as f64 / d as f64) / (2.0 * std::f64::consts::PI);
        let q = 2f64.powf(turns.log2().floor() - 7.0);
        let hi = (turns / q).round() * q;
        table.extend([hi as f32, (turns - hi) as f32]);
    }
    table
}

/// Angle in [-π, π) for `pos` and frequency `i`; rope.wgsl's `angle` does the same f32 steps.
fn angle(turns: &[f32], pos: u32, i: usize) -> f32 {
    let q = pos as f32;
    let a = q * turns[2 * i];
    let mut t = (a - a.floor()) + q * turns[2 * i + 1];
    t -= (t + 0.5).floor();
    t * std::f32::consts::TAU
}

/// Rotates every (i, i + D/2) pair of `x` by `sign` · angle.
fn rotate(op: &'static str, x: &Tensor, turns: &[f32], pos_offset: usize, sign: f32) -> Result<Tensor> {
    let &[_, t, h, d] = x.shape() else { unreachable!("rope: shape checked") };
    let half = d / 2;
    on_device(
        op,
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            let mut out = vec![0.0; x.numel()];
            // One row per (b, t): the cos/sin of its position serve all H heads.
            par_rows(&mut out, h * d, |r, row| {
                let pos = (pos_offset + r % t) as u32;
                let (cos, sin): (Vec<f32>, Vec<f32>) = (0..half)
                    .map(|i| {
                        let th = angle(turns, pos, i);
                        (th.cos(), sign * th.sin())
                    })
                    .unzip();
                let xrow = &xv[r * h * d..(r + 1) * h * d];
                for (o, xh) in row.chunks_mut(d).zip(xrow.chunks(d)) {
                    for i in 0..half {
                        let (a, b) = (xh[i], xh[i + half]);
                        o[i] = a * cos[i] - b * sin[i];
                        o[i + half] = b * cos[i] + a * sin[i];
                    }
                }
            });
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let n = x.numel() / 2;
            let out = ctx.alloc(x.numel() as u64 * 4);
            let table = ctx.upload(bytemuck::cast_slice(turns));
            let params =
                [n as u32, t as u32, h as u32, half as u32, x.offset() as u32, pos_offset as u32, sign.to_bits()];
            ctx.dispatch(&KERNEL, "rope", &params, &[x.gpu(), &table, &out], grid_for(n));
            Ok(Tensor::from_gpu(out, x.shape(), Precision::FP32))
        },
    )
}
