//! RMSNorm over the last dim, y = x / sqrt(mean(x²) + eps) * gamma, with its backward.

use super::{float_input, on_device, same_device, sum_rows};
use crate::autograd::{record, record_multi};
use crate::device::cpu;
use crate::device::gpu::{self, grid, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "rmsnorm", source: include_str!("rmsnorm.wgsl"), params: &RmsnormParams::LAYOUT, codes: &[] };

kernel_params! {
    /// rmsnorm.wgsl's Params.
    pub(crate) struct RmsnormParams {
        rows: u32,
        cols: u32,
        x_off: u32,
        g_off: u32,
        y_off: u32,
        eps: f32,
        rows_per_group: u32,
        res_off: u32,
        add_res: u32,
    }
}

/// Rows per backward task: each task sums its rows' dy·xhat into one partial dgamma row,
/// then the partials are summed in order (fixed grouping, so dgamma is deterministic).
const ROWS_PER_GROUP: usize = 16;

/// x: [.., C], gamma: [C] -> [.., C] (f32). BF16 inputs are widened first.
pub fn rmsnorm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<Tensor> {
    let (x, gamma) = (float_input("rmsnorm", x)?, float_input("rmsnorm", gamma)?);
    same_device("rmsnorm", &[&x, &gamma])?;
    let (rows, c) = check("rmsnorm", &x, &gamma, eps)?;
    let (out, rstd, _) = forward(&x, None, &gamma, rows, c, eps)?;
    let (xs, gs) = (x.clone(), gamma.clone());
    Ok(record("rmsnorm", out, &[&x, &gamma], move |dy| {
        let (dx, dgamma) = backward(&xs, &gs, &rstd, dy, None, rows, c)?;
        Ok(vec![Some(dx), Some(dgamma)])
    }))
}

/// The residual add and the norm after it, fused: h = x + y, n = rmsnorm(h, gamma).
/// x, y: [.., C] (same shape), gamma: [C] -> (h, n), both f32. One kernel each way: the
/// backward gives dx = dy = dh + (the norm's backward of dn) without a separate add.
pub fn add_rmsnorm(x: &Tensor, y: &Tensor, gamma: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "add_rmsnorm";
    let (x, y, gamma) = (float_input(OP, x)?, float_input(OP, y)?, float_input(OP, gamma)?);
    same_device(OP, &[&x, &y, &gamma])?;
    if x.shape() != y.shape() {
        bail!(Shape, "{OP}: x and y must have the same shape, got {:?} and {:?}", x.shape(), y.shape());
    }
    let (rows, c) = check(OP, &x, &gamma, eps)?;
    let (n, rstd, h) = forward(&x, Some(&y), &gamma, rows, c, eps)?;
    let h = h.expect("the fused forward returns h");
    let (hs, gs) = (h.clone(), gamma.clone());
    let [h, n] = record_multi(OP, [h, n], &[&x, &y, &gamma], move |d| {
        let (dx, dgamma) = match (&d[0], &d[1]) {
            (dh, Some(dn)) => {
                let (dx, dgamma) = backward(&hs, &gs, &rstd, dn, dh.as_ref(), rows, c)?;
                (dx, Some(dgamma))
            }
            (Some(dh), None) => (float_input("add_rmsnorm backward", dh)?, None),
            (None, None) => unreachable!("a node runs only when one of its outputs has a gradient"),
        };
        Ok(vec![Some(dx.clone()), Some(dx), dgamma])
    });
    Ok((h, n))
}

/// (rows, C) of x for the norm, after checking gamma and eps.
fn check(op: &str, x: &Tensor, gamma: &Tensor, eps: f32) -> Result<(usize, usize)> {
    let c = match x.shape().last() {
        Some(&c) if c > 0 => c,
        _ => bail!(Shape, "{op}: x needs a non-empty last dim, got shape {:?}", x.shape()),
    };
    if gamma.shape() != [c] {
        bail!(Shape, "{op}: gamma must be [{c}] to match x of shape {:?}, got {:?}", x.shape(), gamma.shape());
    }
    if eps.is_nan() || eps < 0.0 {
        bail!(Invalid, "{op}: eps must be >= 0, got {eps}");
    }
    Ok((x.numel() / c, c))
}

/// The norm: [rows, C] and the per-row rstd: [rows], saved for the backward. With `y`, the
/// norm is of h = x + y, and h is returned third.
fn forward(
    x: &Tensor,
    y: Option<&Tensor>,
    gamma: &Tensor,
    rows: usize,
    c: usize,
    eps: f32,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let op = if y.is_some() { "add_rmsnorm" } else { "rmsnorm" };
    on_device(
        op,
        x.device(),
        || {
            let (xr, gr, yr) = (x.cpu(), gamma.cpu(), y.map(|y| y.cpu()));
            let (xv, gv, yv) = (xr.f32(), gr.f32(), yr.as_ref().map(|y| y.f32()));
            let mut out = cpu::zeros(rows * c);
            let mut h = cpu::zeros(if y.is_some() { rows * c } else { 0 });
            let mut rstd = vec![0.0; rows];
            // o = row * rstd * gamma; s = rstd
            let norm_row = |row: &[f32], o: &mut [f32], s: &mut f32| {
                let ss: f32 = row.iter().map(|v| v * v).sum();
                *s = 1.0 / (ss / c as f32 + eps).sqrt();
                for ((o, &v), &g) in o.iter_mut().zip(row).zip(gv) {
                    *o = v * *s * g;
                }
            };
            let out_rows = out.par_chunks_mut(c).zip(rstd.par_iter_mut()).enumerate();
            match yv {
                None => out_rows.for_each(|(r, (o, s))| norm_row(&xv[r * c..(r + 1) * c], o, s)),
                Some(yv) => out_rows.zip(h.par_chunks_mut(c)).for_each(|((r, (o, s)), hr)| {
                    for ((hv, &a), &b) in hr.iter_mut().zip(&xv[r * c..]).zip(&yv[r * c..]) {
                        *hv = a + b;
                    }
                    norm_row(hr, o, s);
                }),
            }
            let h = y.map(|_| Tensor::cpu_f32(h, x.shape()));
            Ok((Tensor::cpu_f32(out, x.shape()), Tensor::cpu_f32(rstd, &[rows]), h))
        },
        || {
            let ctx = gpu::context()?;
            let (out, rstd) = (ctx.alloc((rows * c) as u64 * 4), ctx.alloc(rows as u64 * 4));
            let shape = x.shape();
            let f32_tensor = |b, s: &[usize]| Tensor::from_gpu(b, s, Precision::FP32);
            match y {
                None => {
                    let params = params(rows, c, x, gamma, 0, eps, None)?;
                    ctx.dispatch(&KERNEL, "forward", &params, &[x.gpu(), &rstd, &out, gamma.gpu()], grid(rows as u32))?;
                    Ok((f32_tensor(out, shape), f32_tensor(rstd, &[rows]), None))
                }
                Some(y) => {
                    let h = ctx.alloc((rows * c) as u64 * 4);
                    let params = params(rows, c, x, gamma, y.offset(), eps, None)?;
                    let bufs = [x.gpu(), &rstd, &out, gamma.gpu(), y.gpu(), &h];
                    ctx.dispatch(&KERNEL, "add_forward", &params, &bufs, grid(rows as u32))?;
                    Ok((f32_tensor(out, shape), f32_tensor(rstd, &[rows]), Some(f32_tensor(h, shape))))
                }
            }
        },
    )
}

fn params(
    rows: usize,
    c: usize,
    x: &Tensor,
    gamma: &Tensor,
    y_off: usize,
    eps: f32,
    res: Option<&Tensor>,
) -> Result<RmsnormParams> {
    let u = |what, v| to_u32("rmsnorm", what, v);
    Ok(RmsnormParams {
        rows: u("rows", rows)?,
        cols: u("cols", c)?,
        x_off: u("x offset", x.offset())?,
        g_off: u("gamma offset", gamma.offset())?,
        y_off: u("y offset", y_off)?,
        eps,
        rows_per_group: ROWS_PER_GROUP as u32,
        res_off: u("dres offset", res.map_or(0, |r| r.offset()))?,
        add_res: res.is_some() as u32,
    })
}

/// dx = rstd * (gamma*dy - xhat * mean(gamma*dy*xhat)) [+ dres]; dgamma = Σ_rows dy*xhat.
fn backward(
    x: &Tensor,
    gamma: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    dres: Option<&Tensor>,
    rows: usize,
    c: usize,
) -> Result<(Tensor, Tensor)> {
    let dy = float_input("rmsnorm backward", dy)?;
    let dres = dres.map(|d| float_input("rmsnorm backward", d)).transpose()?;
    let groups = rows.div_ceil(ROWS_PER_GROUP);
    let (dx, part) = on_device(
        if dres.is_some() { "add_rmsnorm_backward" } else { "rmsnorm_backward" },
        same_device("rmsnorm backward", &[x, &dy])?,
        || {
            let (xr, gr, sr, dr) = (x.cpu(), gamma.cpu(), rstd.cpu(), dy.cpu());
            let rr = dres.as_ref().map(|d| d.cpu());
            let (xv, gv, sv, dv, rv) = (xr.f32(), gr.f32(), sr.f32(), dr.f32(), rr.as_ref().map(|r| r.f32()));
            let mut dx = cpu::zeros(rows * c);
            let mut part = vec![0.0; groups * c];
            dx.par_chunks_mut(ROWS_PER_GROUP * c).zip(part.par_chunks_mut(c)).enumerate().for_each(|(b, (dxb, pb))| {
                for (j, dxr) in dxb.chunks_mut(c).enumerate() {
                    let r = b * ROWS_PER_GROUP + j;
                    let s = sv[r];
                    let (xrow, drow) = (&xv[r * c..(r + 1) * c], &dv[r * c..(r + 1) * c]);
                    let dot: f32 = (0..c).map(|k| drow[k] * gv[k] * xrow[k]).sum();
                    let m = dot * s / c as f32;
                    for k in 0..c {
                        let xhat = xrow[k] * s;
                        let d = s * (drow[k] * gv[k] - xhat * m);
                        dxr[k] = match rv {
                            Some(rv) => rv[r * c + k] + d,
                            None => d,
                        };
                        pb[k] += drow[k] * xhat;
                    }
                }
            });
            Ok((Tensor::cpu_f32(dx, x.shape()), Tensor::cpu_f32(part, &[groups, c])))
        },
        || {
            let ctx = gpu::context()?;
            let (dx, part) = (ctx.alloc((rows * c) as u64 * 4), ctx.alloc((groups * c) as u64 * 4));
            let params = params(rows, c, x, gamma, dy.offset(), 0.0, dres.as_ref())?;
            // Without dres the kernel never reads that binding: dy stands in for it.
            let res = dres.as_ref().unwrap_or(&dy);
            ctx.dispatch(
                &KERNEL,
                "backward",
                &params,
                &[x.gpu(), rstd.gpu(), &dx, gamma.gpu(), dy.gpu(), &part, res.gpu()],
                grid(groups as u32),
            )?;
            Ok((
                Tensor::from_gpu(dx, x.shape(), Precision::FP32),
                Tensor::from_gpu(part, &[groups, c], Precision::FP32),
            ))
        },
    )?;
    // The partial rows are summed in order by one thread per column.
    Ok((dx, sum_rows(&part)?))
}
