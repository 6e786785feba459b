//! Rotary position embedding (Hugging Face Llama's rotate-half convention) and its backward.

use super::{float_input, grid_for, on_device, same_device, Rope};
use crate::autograd::{record, record_multi};
use crate::device::cpu::{self, par_rows};
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "rope", source: include_str!("rope.wgsl"), params: &RopeParams::LAYOUT, codes: &[] };

kernel_params! {
    /// rope.wgsl's Params.
    pub(crate) struct RopeParams {
        n: u32,
        t: u32,
        h: u32,
        half: u32,
        x_off: u32,
        pos_offset: u32,
        sign: f32,
        hq: u32,
        hkv: u32,
        k_off: u32,
        v_off: u32,
    }
}

/// x: [B, T, H, D] (D even) -> [B, T, H, D] (f32). Position of token t is `pos_offset + t`.
/// For i < D/2: angle = pos · freq_i (base^(-2i/D) unless `rope` scales it: `Rope::inv_freqs`),
/// out[i] = x[i]·cos - x[i+D/2]·sin, out[i+D/2] = x[i+D/2]·cos + x[i]·sin.
/// Angles are accurate to ~1e-5 rad for positions below 65536 (see `turn_table`).
/// `rope` is a `Rope` or, for plain RoPE, just its base.
pub fn rope(x: &Tensor, rope: impl Into<Rope>, pos_offset: usize) -> Result<Tensor> {
    let rope = rope.into();
    let x = float_input("rope", x)?;
    let &[_, t, _, d] = x.shape() else {
        bail!(Shape, "rope: x must be [B, T, H, D], got shape {:?}", x.shape());
    };
    if d == 0 || d % 2 == 1 {
        bail!(Shape, "rope: head dim D must be even and > 0, got D = {d} in shape {:?}", x.shape());
    }
    check(&rope, pos_offset + t)?;
    let turns = turn_table(&rope, d);
    let out = rotate("rope", &x, &turns, pos_offset, 1.0)?;
    Ok(record("rope", out, &[&x], move |dy| {
        let dy = float_input("rope backward", dy)?;
        Ok(vec![Some(rotate("rope_backward", &dy, &turns, pos_offset, -1.0)?)])
    }))
}

fn check(rope: &Rope, end: usize) -> Result<()> {
    rope.check()?;
    if end > u32::MAX as usize {
        bail!(Invalid, "rope: positions up to {end} do not fit in u32");
    }
    Ok(())
}

/// The attention's fused projection y: [B, T, H + 2·Hkv, D] (the heads of queries, then keys,
/// then values: one matmul makes them) -> (`rope(q)`, `rope(k)`, v) as [B, T, H, D],
/// [B, T, Hkv, D] and [B, T, Hkv, D]: one pass each way instead of two ropes and three copies.
pub fn rope_qkv(
    y: &Tensor,
    heads: usize,
    kv_heads: usize,
    rope: impl Into<Rope>,
    pos_offset: usize,
) -> Result<[Tensor; 3]> {
    let rope = rope.into();
    let y = float_input("rope_qkv", y)?;
    let &[b, t, g, d] = y.shape() else {
        bail!(Shape, "rope_qkv: y must be [B, T, H + 2·Hkv, D], got shape {:?}", y.shape());
    };
    if heads == 0 || kv_heads == 0 || g != heads + 2 * kv_heads || d == 0 || d % 2 == 1 {
        bail!(
            Shape,
            "rope_qkv: y {:?} must hold {heads} query and 2 × {kv_heads} key/value heads of even size",
            y.shape()
        );
    }
    check(&rope, pos_offset + t)?;
    let turns = turn_table(&rope, d);
    let out = split(&y, heads, kv_heads, &turns, pos_offset)?;
    let (sizes, device) = ([heads, kv_heads, kv_heads], y.device());
    let outs = [0, 1, 2].map(|k| {
        let at = out.offset() + b * t * d * sizes[..k].iter().sum::<usize>();
        Tensor::from_storage(out.storage().clone(), at, &[b, t, sizes[k], d], Precision::FP32)
    });
    Ok(record_multi("rope_qkv", outs, &[&y], move |dys| {
        let dys = (0..3)
            .map(|k| match &dys[k] {
                Some(dy) => float_input("rope_qkv backward", dy),
                None => Ok(Tensor::zeros_on(&[b, t, sizes[k], d], Precision::FP32, device)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(vec![Some(merge(&dys, g, &turns, pos_offset)?)])
    }))
}

/// rope_qkv's forward: q, k (rotated) and v one after another in one new [B·T·(H + 2·Hkv)·D].
fn split(y: &Tensor, hq: usize, hkv: usize, turns: &[f32], pos_offset: usize) -> Result<Tensor> {
    let &[b, t, g, d] = y.shape() else { unreachable!("rope_qkv: shape checked") };
    let rows = b * t;
    on_device(
        "rope_qkv",
        y.device(),
        || {
            let yr = y.cpu();
            let yv = yr.f32();
            let mut out = cpu::zeros(y.numel());
            let (q, rest) = out.split_at_mut(rows * hq * d);
            let (k, v) = rest.split_at_mut(rows * hkv * d);
            let rows = q.par_chunks_mut(hq * d).zip(k.par_chunks_mut(hkv * d)).zip(v.par_chunks_mut(hkv * d));
            let table = cos_sin_table(turns, pos_offset, t, 1.0);
            rows.enumerate().for_each(|(r, ((q, k), v))| {
                let (cos, sin) = &table[r % t];
                let src = &yv[r * g * d..(r + 1) * g * d];
                rotate_heads(&src[..hq * d], q, cos, sin);
                rotate_heads(&src[hq * d..(hq + hkv) * d], k, cos, sin);
                v.copy_from_slice(&src[(hq + hkv) * d..]);
            });
            Ok(Tensor::cpu_f32(out, &[y.numel()]))
        },
        || {
            let ctx = gpu::context()?;
            let n = y.numel() / 2;
            let out = ctx.alloc(y.numel() as u64 * 4);
            let table = ctx.constant(bytemuck::cast_slice(turns));
            let u = |what, v| to_u32("rope_qkv", what, v);
            let params = RopeParams {
                n: u("pairs", n)?,
                t: u("positions", t)?,
                h: u("heads", g)?,
                half: u("half head dim", d / 2)?,
                x_off: u("offset", y.offset())?,
                pos_offset: u("position offset", pos_offset)?,
                hq: u("query heads", hq)?,
                hkv: u("kv heads", hkv)?,
                ..Default::default()
            };
            ctx.dispatch(&KERNEL, "qkv_rope", &params, &[y.gpu(), &*table, &out], grid_for(n))?;
            Ok(Tensor::from_gpu(out, &[y.numel()], Precision::FP32))
        },
    )
}

/// rope_qkv's backward: dy [B, T, H + 2·Hkv, D] from dq, dk (rotated back) and dv.
fn merge(dys: &[Tensor], g: usize, turns: &[f32], pos_offset: usize) -> Result<Tensor> {
    let (dq, dk, dv) = (&dys[0], &dys[1], &dys[2]);
    let &[b, t, hq, d] = dq.shape() else { unreachable!("rope_qkv: shapes checked") };
    let hkv = dk.shape()[2];
    let shape = [b, t, g, d];
    on_device(
        "rope_qkv_backward",
        same_device("rope_qkv backward", &[dq, dk, dv])?,
        || {
            let (qr, kr, vr) = (dq.cpu(), dk.cpu(), dv.cpu());
            let (qv, kv, vv) = (qr.f32(), kr.f32(), vr.f32());
            let mut out = cpu::zeros(b * t * g * d);
            let table = cos_sin_table(turns, pos_offset, t, -1.0);
            par_rows(&mut out, g * d, |r, row| {
                let (cos, sin) = &table[r % t];
                let (q, rest) = row.split_at_mut(hq * d);
                let (k, v) = rest.split_at_mut(hkv * d);
                rotate_heads(&qv[r * hq * d..(r + 1) * hq * d], q, cos, sin);
                rotate_heads(&kv[r * hkv * d..(r + 1) * hkv * d], k, cos, sin);
                v.copy_from_slice(&vv[r * hkv * d..(r + 1) * hkv * d]);
            });
            Ok(Tensor::cpu_f32(out, &shape))
        },
        || {
            let ctx = gpu::context()?;
            let n = b * t * g * d / 2;
            let out = ctx.alloc(n as u64 * 8);
            let table = ctx.constant(bytemuck::cast_slice(turns));
            let u = |what, v| to_u32("rope_qkv backward", what, v);
            let params = RopeParams {
                n: u("pairs", n)?,
                t: u("positions", t)?,
                h: u("heads", g)?,
                half: u("half head dim", d / 2)?,
                x_off: u("dq offset", dq.offset())?,
                pos_offset: u("position offset", pos_offset)?,
                sign: 0.0,
                hq: u("query heads", hq)?,
                hkv: u("kv heads", hkv)?,
                k_off: u("dk offset", dk.offset())?,
                v_off: u("dv offset", dv.offset())?,
            };
            let buffers = [dq.gpu(), &*table, &out, dk.gpu(), dv.gpu()];
            ctx.dispatch(&KERNEL, "qkv_rope_backward", &params, &buffers, grid_for(n))?;
            Ok(Tensor::from_gpu(out, &shape, Precision::FP32))
        },
    )
}

/// cos_sin of positions pos_offset.. pos_offset + t: rows of every sequence share them, so a batch
/// of B sequences takes the trigonometry once instead of B times.
fn cos_sin_table(turns: &[f32], pos_offset: usize, t: usize, sign: f32) -> Vec<(Vec<f32>, Vec<f32>)> {
    (0..t).map(|p| cos_sin(turns, (pos_offset + p) as u32, sign)).collect()
}

/// cos and sign · sin of every frequency's angle at `pos`.
fn cos_sin(turns: &[f32], pos: u32, sign: f32) -> (Vec<f32>, Vec<f32>) {
    (0..turns.len() / 2)
        .map(|i| {
            let th = angle(turns, pos, i);
            (th.cos(), sign * th.sin())
        })
        .unzip()
}

/// Each head (D = 2·cos.len() values) of x rotated into out: (a, b) -> (a·cos - b·sin, b·cos + a·sin).
fn rotate_heads(x: &[f32], out: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for (o, xh) in out.chunks_mut(2 * half).zip(x.chunks(2 * half)) {
        for i in 0..half {
            let (a, b) = (xh[i], xh[i + half]);
            o[i] = a * cos[i] - b * sin[i];
            o[i + half] = b * cos[i] + a * sin[i];
        }
    }
}

/// freq_i / 2π for i < D/2, each split as hi + lo with hi rounded to 8 significant bits
/// (computed in f64). pos · hi is then exact in f32 for pos < 2^16, so the whole turns can be
/// dropped exactly and the angle never carries the f32 rounding of a large pos · freq.
fn turn_table(rope: &Rope, d: usize) -> Vec<f32> {
    let mut table = Vec::with_capacity(d);
    for freq in rope.inv_freqs(d) {
        let turns = freq / (2.0 * std::f64::consts::PI);
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
            let mut out = cpu::zeros(x.numel());
            // One row per (b, t): the cos/sin of its position serve all H heads.
            let table = cos_sin_table(turns, pos_offset, t, sign);
            par_rows(&mut out, h * d, |r, row| {
                let (cos, sin) = &table[r % t];
                rotate_heads(&xv[r * h * d..(r + 1) * h * d], row, cos, sin);
            });
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let n = x.numel() / 2;
            let out = ctx.alloc(x.numel() as u64 * 4);
            let table = ctx.constant(bytemuck::cast_slice(turns));
            let u = |what, v| to_u32("rope", what, v);
            let params = RopeParams {
                n: u("pairs", n)?,
                t: u("positions", t)?,
                h: u("heads", h)?,
                half: u("half head dim", half)?,
                x_off: u("offset", x.offset())?,
                pos_offset: u("position offset", pos_offset)?,
                sign,
                ..Default::default()
            };
            ctx.dispatch(&KERNEL, "rope", &params, &[x.gpu(), &*table, &out], grid_for(n))?;
            Ok(Tensor::from_gpu(out, x.shape(), Precision::FP32))
        },
    )
}
