//! RMSNorm over the last dim, y = x / sqrt(mean(x²) + eps) * gamma, with its backward.

use super::{float_input, on_device, same_device, sum_rows};
use crate::autograd::record;
use crate::device::gpu::{self, grid, Kernel};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel = Kernel { name: "rmsnorm", source: include_str!("rmsnorm.wgsl") };

/// Rows per backward task: each task sums its rows' dy·xhat into one partial dgamma row,
/// then the partials are summed in order (fixed grouping, so dgamma is deterministic).
const ROWS_PER_GROUP: usize = 16;

/// x: [.., C], gamma: [C] -> [.., C] (f32). BF16 inputs are widened first.
pub fn rmsnorm(x: &Tensor, gamma: &Tensor, eps: f32) -> Result<Tensor> {
    let (x, gamma) = (float_input("rmsnorm", x)?, float_input("rmsnorm", gamma)?);
    same_device("rmsnorm", &[&x, &gamma])?;
    let c = match x.shape().last() {
        Some(&c) if c > 0 => c,
        _ => bail!(Shape, "rmsnorm: x needs a non-empty last dim, got shape {:?}", x.shape()),
    };
    if gamma.shape() != [c] {
        bail!(Shape, "rmsnorm: gamma must be [{c}] to match x of shape {:?}, got {:?}", x.shape(), gamma.shape());
    }
    if eps.is_nan() || eps < 0.0 {
        bail!(Invalid, "rmsnorm: eps must be >= 0, got {eps}");
    }
    let rows = x.numel() / c;
    let (out, rstd) = forward(&x, &gamma, rows, c, eps)?;
    let (xs, gs) = (x.clone(), gamma.clone());
    Ok(record("rmsnorm", out, &[&x, &gamma], move |dy| {
        let (dx, dgamma) = backward(&xs, &gs, &rstd, dy, rows, c)?;
        Ok(vec![Some(dx), Some(dgamma)])
    }))
}

/// y: [rows, C] and the per-row rstd: [rows], saved for the backward.
fn forward(x: &Tensor, gamma: &Tensor, rows: usize, c: usize, eps: f32) -> Result<(Tensor, Tensor)> {
    on_device(
        "rmsnorm",
        x.device(),
        || {
            let (xr, gr) = (x.cpu(), gamma.cpu());
            let (xv, gv) = (xr.f32(), gr.f32());
            let mut out = vec![0.0; rows * c];
            let mut rstd = vec![0.0; rows];
            out.par_chunks_mut(c).zip(rstd.par_iter_mut()).enumerate().for_each(|(r, (o, s))| {
                let row = &xv[r * c..(r + 1) * c];
                let ss: f32 = row.iter().map(|v| v * v).sum();
                *s = 1.0 / (ss / c as f32 + eps).sqrt();
                for ((o, &v), &g) in o.iter_mut().zip(row).zip(gv) {
                    *o = v * *s * g;
                }
            });
            Ok((Tensor::cpu_f32(out, x.shape()), Tensor::cpu_f32(rstd, &[rows])))
        },
        || {
            let ctx = gpu::context()?;
            let (out, rstd) = (ctx.alloc((rows * c) as u64 * 4), ctx.alloc(rows as u64 * 4));
            let params = params(rows, c, x, gamma, 0, eps);
            ctx.dispatch(&KERNEL, "forward", &params, &[x.gpu(), &rstd, &out, gamma.gpu()], grid(rows as u32));
            Ok((Tensor::from_gpu(out, x.shape(), Precision::FP32), Tensor::from_gpu(rstd, &[rows], Precision::FP32)))
        },
    )
}

fn params(rows: usize, c: usize, x: &Tensor, gamma: &Tensor, dy_off: usize, eps: f32) -> [u32; 7] {
    [
        rows as u32,
        c as u32,
        x.offset() as u32,
        gamma.offset() as u32,
        dy_off as u32,
        eps.to_bits(),
        ROWS_PER_GROUP as u32,
    ]
}

/// dx = rstd * (gamma*dy - xhat * mean(gamma*dy*xhat)); dgamma = Σ_rows dy*xhat.
fn backward(x: &Tensor, gamma: &Tensor, rstd: &Tensor, dy: &Tensor, rows: usize, c: usize) -> Result<(Tensor, Tensor)> {
    let dy = float_input("rmsnorm backward", dy)?;
    let groups = rows.div_ceil(ROWS_PER_GROUP);
    let (dx, part) = on_device(
        "rmsnorm_backward",
        same_device("rmsnorm backward", &[x, &dy])?,
        || {
            let (xr, gr, sr, dr) = (x.cpu(), gamma.cpu(), rstd.cpu(), dy.cpu());
            let (xv, gv, sv, dv) = (xr.f32(), gr.f32(), sr.f32(), dr.f32());
            let mut dx = vec![0.0; rows * c];
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
                        dxr[k] = s * (drow[k] * gv[k] - xhat * m);
                        pb[k] += drow[k] * xhat;
                    }
                }
            });
            Ok((Tensor::cpu_f32(dx, x.shape()), Tensor::cpu_f32(part, &[groups, c])))
        },
        || {
            let ctx = gpu::context()?;
            let (dx, part) = (ctx.alloc((rows * c) as u64 * 4), ctx.alloc((groups * c) as u64 * 4));
            let params = params(rows, c, x, gamma, dy.offset(), 0.0);
            ctx.dispatch(
                &KERNEL,
                "backward",
                &params,
                &[x.gpu(), rstd.gpu(), &dx, gamma.gpu(), dy.gpu(), &part],
                grid(groups as u32),
            );
            Ok((
                Tensor::from_gpu(dx, x.shape(), Precision::FP32),
                Tensor::from_gpu(part, &[groups, c], Precision::FP32),
            ))
        },
    )?;
    // The partial rows are summed in order by one thread per column.
    Ok((dx, sum_rows(&part)?))
}
