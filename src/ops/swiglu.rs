//! SwiGLU's gate, silu(gate) * up, fused: one pass forward and one backward (the FFN's activation).

use super::{float_input, grid_for, on_device, same_device};
use crate::autograd::record;
use crate::device::cpu::{self, par_rows};
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "swiglu", source: include_str!("swiglu.wgsl"), params: &SwigluParams::LAYOUT, codes: &[] };

kernel_params! {
    /// swiglu.wgsl's Params.
    pub(crate) struct SwigluParams {
        n: u32,
        cols: u32,
        rs: u32,
        g_off: u32,
        u_off: u32,
        dy_off: u32,
        ors: u32,
        dg_off: u32,
        du_off: u32,
        vec: u32,
    }
}

/// gate, up: [.., F] (same shape) -> silu(gate) * up (f32), as `mul(silu(gate), up)` computes it.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (gate, up) = (float_input("swiglu", gate)?, float_input("swiglu", up)?);
    same_device("swiglu", &[&gate, &up])?;
    if gate.shape() != up.shape() {
        bail!(Shape, "swiglu: gate and up must have the same shape, got {:?} and {:?}", gate.shape(), up.shape());
    }
    let cols = gate.shape().last().copied().unwrap_or(1);
    let rows = gate.numel() / cols.max(1);
    let l = Layout { rows, cols, rs: cols, g_off: gate.offset(), u_off: up.offset() };
    let out = forward(&gate, &up, &l, gate.shape())?;
    let (g, u, shape) = (gate.clone(), up.clone(), gate.shape().to_vec());
    Ok(record("swiglu", out, &[&gate, &up], move |dy| {
        // dgate and dup side by side in one [2, rows, F] buffer.
        let d = backward(&g, &u, &l, dy, (cols, 0, rows * cols))?;
        let part =
            |k: usize| Tensor::from_storage(d.storage().clone(), d.offset() + k * rows * cols, &shape, d.dtype());
        Ok(vec![Some(part(0)), Some(part(1))])
    }))
}

/// x: [.., 2F], gate and up side by side in each row (one matmul makes both) -> [.., F] =
/// silu(x[.., :F]) * x[.., F:]; its gradient is again one [.., 2F].
pub fn swiglu_halves(x: &Tensor) -> Result<Tensor> {
    let x = float_input("swiglu_halves", x)?;
    let shape = x.shape().to_vec();
    let Some(&two_f) = shape.last().filter(|&&c| c % 2 == 0 && c > 0) else {
        bail!(Shape, "swiglu_halves: the last dim must be even (gate and up side by side), got shape {shape:?}");
    };
    let (rows, cols) = (x.numel() / two_f, two_f / 2);
    let l = Layout { rows, cols, rs: two_f, g_off: x.offset(), u_off: x.offset() + cols };
    let mut out_shape = shape.clone();
    *out_shape.last_mut().unwrap() = cols;
    let out = forward(&x, &x, &l, &out_shape)?;
    let saved = x.clone();
    Ok(record("swiglu", out, &[&x], move |dy| {
        Ok(vec![Some(backward(&saved, &saved, &l, dy, (two_f, 0, cols))?.view(&shape)?)])
    }))
}

/// Where gate and up are: element (r, c) of gate at g_off + r·rs + c, of up at u_off + r·rs + c.
#[derive(Clone, Copy)]
struct Layout {
    rows: usize,
    cols: usize,
    rs: usize,
    g_off: usize,
    u_off: usize,
}

/// The params from their values in the Params order (all but `vec`, which says whether every
/// one of them is a multiple of 4, so the kernel may read and write whole vec4s).
fn params(op: &str, v: [usize; 9]) -> Result<SwigluParams> {
    let [n, cols, rs, g_off, u_off, dy_off, ors, dg_off, du_off] = v.map(|x| to_u32(op, "size or offset", x));
    Ok(SwigluParams {
        n: n?,
        cols: cols?,
        rs: rs?,
        g_off: g_off?,
        u_off: u_off?,
        dy_off: dy_off?,
        ors: ors?,
        dg_off: dg_off?,
        du_off: du_off?,
        vec: v.iter().all(|x| x.is_multiple_of(4)) as u32,
    })
}

#[inline(always)]
fn silu(g: f32) -> f32 {
    g / (1.0 + cpu::exp(-g))
}

/// One row's dgate and dup from gate g, up u and dy d (slices: no index checks, so it vectorises).
#[inline(always)]
fn grads_row(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for ((((&g, &u), &d), dg), du) in g.iter().zip(u).zip(d).zip(dg).zip(du) {
        let e = cpu::exp(-g);
        let s = 1.0 / (1.0 + e);
        (*dg, *du) = (d * u * (s * (1.0 + g * (1.0 - s))), d * (g / (1.0 + e)));
    }
}

fn forward(gate: &Tensor, up: &Tensor, l: &Layout, shape: &[usize]) -> Result<Tensor> {
    let n = l.rows * l.cols;
    on_device(
        "swiglu",
        gate.device(),
        || {
            let (gr, ur) = (gate.cpu(), up.cpu());
            // The host's slices start at each tensor's own offset.
            let (gv, uv) = (&gr.f32()[l.g_off - gate.offset()..], &ur.f32()[l.u_off - up.offset()..]);
            let out = cpu::par_rows_new(
                n,
                l.cols,
                #[inline(always)]
                |r, o| {
                    for ((o, &g), &u) in o.iter_mut().zip(&gv[r * l.rs..]).zip(&uv[r * l.rs..]) {
                        *o = silu(g) * u;
                    }
                },
            );
            Ok(Tensor::cpu_f32(out, shape))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let params = params("swiglu", [n, l.cols, l.rs, l.g_off, l.u_off, 0, 0, 0, 0])?;
            let groups = grid_for(n.div_ceil(4));
            ctx.dispatch(&KERNEL, "forward", &params, &[gate.gpu(), up.gpu(), &out], groups)?;
            Ok(Tensor::from_gpu(out, shape, Precision::FP32))
        },
    )
}

/// dgate = dy·up·silu'(gate) and dup = dy·silu(gate), in one pass, into one new buffer laid out
/// by `(row stride, dgate's offset, dup's offset)`; returned flat.
fn backward(gate: &Tensor, up: &Tensor, l: &Layout, dy: &Tensor, to: (usize, usize, usize)) -> Result<Tensor> {
    let dy = float_input("swiglu backward", dy)?;
    let (n, (ors, dg_off, du_off)) = (l.rows * l.cols, to);
    let size = 2 * n;
    on_device(
        "swiglu_backward",
        same_device("swiglu backward", &[gate, &dy])?,
        || {
            let (gr, ur, dr) = (gate.cpu(), up.cpu(), dy.cpu());
            let (gv, uv) = (&gr.f32()[l.g_off - gate.offset()..], &ur.f32()[l.u_off - up.offset()..]);
            let dv = dr.f32();
            let mut out = cpu::zeros(size);
            // Row r's dgate and dup, from slices (no index checks in the loop, which vectorises).
            let grads = |r: usize, dg: &mut [f32], du: &mut [f32]| {
                let (g, u) = (&gv[r * l.rs..][..l.cols], &uv[r * l.rs..][..l.cols]);
                cpu::simd(
                    #[inline(always)]
                    || grads_row(g, u, &dv[r * l.cols..], dg, du),
                )
            };
            if ors == l.cols {
                // Separate dgate and dup: each its own half of `out`.
                let (dg, du) = out.split_at_mut(n);
                dg.par_chunks_mut(l.cols)
                    .zip(du.par_chunks_mut(l.cols))
                    .enumerate()
                    .for_each(|(r, (dg, du))| grads(r, dg, du));
            } else {
                // Side by side in each row.
                par_rows(&mut out, ors, |r, o| {
                    let (dg, du) = if dg_off < du_off {
                        let (a, b) = o.split_at_mut(du_off);
                        (&mut a[dg_off..], b)
                    } else {
                        let (a, b) = o.split_at_mut(dg_off);
                        (b, &mut a[du_off..])
                    };
                    grads(r, &mut dg[..l.cols], &mut du[..l.cols]);
                });
            }
            Ok(Tensor::cpu_f32(out, &[size]))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(size as u64 * 4);
            let params =
                params("swiglu backward", [n, l.cols, l.rs, l.g_off, l.u_off, dy.offset(), ors, dg_off, du_off])?;
            let groups = grid_for(n.div_ceil(4));
            ctx.dispatch(&KERNEL, "backward", &params, &[gate.gpu(), up.gpu(), &out, dy.gpu()], groups)?;
            Ok(Tensor::from_gpu(out, &[size], Precision::FP32))
        },
    )
}
