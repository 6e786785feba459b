//! Reductions: sum / mean / max over the last dim and over everything, and column sums.

use super::{float_input, grid_for, on_device};
use crate::autograd::{no_backward, record};
use crate::device::cpu::{self, CpuBuffer, CHUNK};
use crate::device::gpu::{self, grid, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "reduce", source: include_str!("reduce.wgsl"), params: &ReduceParams::LAYOUT, codes: &[] };

kernel_params! {
    /// reduce.wgsl's Params.
    pub(crate) struct ReduceParams {
        rows: u32,
        cols: u32,
        n: u32,
        x_off: u32,
        scale: f32,
        block: u32,
    }
}

/// The params of `op`: `n` elements of x from `x_off`, as `rows` of `cols`.
fn params(
    op: &str,
    rows: usize,
    cols: usize,
    n: usize,
    x_off: usize,
    scale: f32,
    block: usize,
) -> Result<ReduceParams> {
    Ok(ReduceParams {
        rows: to_u32(op, "rows", rows)?,
        cols: to_u32(op, "cols", cols)?,
        n: to_u32(op, "elements", n)?,
        x_off: to_u32(op, "offset", x_off)?,
        scale,
        block: to_u32(op, "block", block)?,
    })
}

fn last_dim(op: &str, x: &Tensor) -> Result<(usize, usize)> {
    match x.shape().last() {
        Some(&0) | None => bail!(Shape, "{op}: needs a non-empty last dim, got shape {:?}", x.shape()),
        Some(&c) => Ok((x.numel() / c, c)),
    }
}

/// Sum of each `cols`-long row of `x` times `scale` (rows the GPU's way: one workgroup each).
fn row_sums(op: &'static str, x: &Tensor, rows: usize, cols: usize, scale: f32) -> Result<Tensor> {
    on_device(
        op,
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            let out = cpu::par_rows_new(rows, 1, |r, o| {
                let end = ((r + 1) * cols).min(xv.len());
                o[0] = xv[r * cols..end].iter().sum::<f32>() * scale;
            });
            Ok(Tensor::cpu_f32(out, &[rows]))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(rows as u64 * 4);
            let params = params("sum", rows, cols, x.numel(), x.offset(), scale, 0)?;
            ctx.dispatch(&KERNEL, "row_sum", &params, &[x.gpu(), &out], grid(rows as u32))?;
            Ok(Tensor::from_gpu(out, &[rows], Precision::FP32))
        },
    )
}

/// dx[r, c] = dy[r] * scale
fn expand(op: &'static str, dy: &Tensor, shape: &[usize], cols: usize, scale: f32) -> Result<Tensor> {
    let n = crate::tensor::numel(shape);
    on_device(
        op,
        dy.device(),
        || {
            let dr = dy.cpu();
            let dv = dr.f32();
            let out = cpu::par_rows_new(n, cols, |r, row| row.fill(dv[r] * scale));
            Ok(Tensor::cpu_f32(out, shape))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let params = params("sum backward", 0, cols, n, dy.offset(), scale, 0)?;
            ctx.dispatch(&KERNEL, "expand", &params, &[dy.gpu(), &out], grid_for(n))?;
            Ok(Tensor::from_gpu(out, shape, Precision::FP32))
        },
    )
}

fn sum_last(op: &'static str, backward: &'static str, x: &Tensor, mean: bool) -> Result<Tensor> {
    let x = float_input(op, x)?;
    let (rows, cols) = last_dim(op, &x)?;
    let scale = if mean { 1.0 / cols as f32 } else { 1.0 };
    let out_shape = &x.shape()[..x.rank() - 1];
    let out = row_sums(op, &x, rows, cols, scale)?.view(out_shape)?;
    let in_shape = x.shape().to_vec();
    Ok(record(op, out, &[&x], move |dy| Ok(vec![Some(expand(backward, dy, &in_shape, cols, scale)?)])))
}

/// Sum over the last dim: [.., C] -> [..].
pub fn sum(x: &Tensor) -> Result<Tensor> {
    sum_last("sum", "sum_backward", x, false)
}

/// Mean over the last dim: [.., C] -> [..].
pub fn mean(x: &Tensor) -> Result<Tensor> {
    sum_last("mean", "mean_backward", x, true)
}

fn all(op: &'static str, backward: &'static str, x: &Tensor, mean: bool) -> Result<Tensor> {
    let x = float_input(op, x)?;
    let n = x.numel();
    if n == 0 {
        bail!(Shape, "{op}: empty tensor of shape {:?}", x.shape());
    }
    let scale = if mean { 1.0 / n as f32 } else { 1.0 };
    // Two passes over fixed chunks, so the order of additions never depends on threads.
    let chunks = n.div_ceil(CHUNK);
    let partial = row_sums(op, &x, chunks, CHUNK, 1.0)?;
    let out = row_sums(op, &partial, 1, chunks, scale)?.view(&[])?;
    let in_shape = x.shape().to_vec();
    Ok(record(op, out, &[&x], move |dy| {
        let dy = dy.view(&[1])?;
        Ok(vec![Some(expand(backward, &dy, &in_shape, n, scale)?)])
    }))
}

/// Sum of all elements, shape [].
pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    all("sum_all", "sum_all_backward", x, false)
}

/// Mean of all elements, shape [].
pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    all("mean_all", "mean_all_backward", x, true)
}

/// Max over the last dim: [.., C] -> [..]; the gradient goes to the first maximum.
pub fn max(x: &Tensor) -> Result<Tensor> {
    let x = float_input("max", x)?;
    let (rows, cols) = last_dim("max", &x)?;
    let out_shape = &x.shape()[..x.rank() - 1];
    let (out, idx) = on_device(
        "max",
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            let (vals, idx): (Vec<f32>, Vec<u32>) = xv
                .par_chunks(cols)
                .map(|row| {
                    let mut best = (row[0], 0u32);
                    for (j, &v) in row.iter().enumerate().skip(1) {
                        if v > best.0 {
                            best = (v, j as u32);
                        }
                    }
                    best
                })
                .unzip();
            Ok((Tensor::cpu_f32(vals, out_shape), Tensor::from_cpu(CpuBuffer::U32(idx), &[rows])))
        },
        || {
            let ctx = gpu::context()?;
            let (out, idx) = (ctx.alloc(rows as u64 * 4), ctx.alloc(rows as u64 * 4));
            let params = params("max", rows, cols, x.numel(), x.offset(), 0.0, 0)?;
            ctx.dispatch(&KERNEL, "row_max", &params, &[x.gpu(), &out, &idx], grid(rows as u32))?;
            Ok((Tensor::from_gpu(out, out_shape, Precision::FP32), Tensor::from_gpu(idx, &[rows], Precision::U32)))
        },
    )?;
    let in_shape = x.shape().to_vec();
    Ok(record("max", out, &[&x], move |dy| Ok(vec![Some(max_backward(dy, &idx, &in_shape, cols)?)])))
}

fn max_backward(dy: &Tensor, idx: &Tensor, shape: &[usize], cols: usize) -> Result<Tensor> {
    let n = crate::tensor::numel(shape);
    on_device(
        "max_backward",
        dy.device(),
        || {
            let (dr, ir) = (dy.cpu(), idx.cpu());
            let (dv, iv) = (dr.f32(), ir.u32());
            let out = cpu::par_rows_new(n, cols, |r, row| row[iv[r] as usize] = dv[r]);
            Ok(Tensor::cpu_f32(out, shape))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let params = params("max backward", 0, cols, n, dy.offset(), 0.0, 0)?;
            ctx.dispatch(&KERNEL, "max_backward", &params, &[dy.gpu(), &out, idx.gpu()], grid_for(n))?;
            Ok(Tensor::from_gpu(out, shape, Precision::FP32))
        },
    )
}

/// Max of all elements, shape [].
pub fn max_all(x: &Tensor) -> Result<Tensor> {
    max(&x.view(&[1, x.numel()])?)?.view(&[])
}

/// Column sums of a 2-D tensor: [R, C] -> [C] (the backward of a broadcast operand).
pub fn sum_rows(x: &Tensor) -> Result<Tensor> {
    no_backward("sum_rows", &[x])?;
    let x = float_input("sum_rows", x)?;
    let &[rows, cols] = x.shape() else {
        bail!(Shape, "sum_rows: expects a 2-D tensor, got shape {:?}", x.shape());
    };
    on_device(
        "sum_rows",
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            let mut out = vec![0.0; cols];
            // Columns in parallel blocks; each column sums its rows in order.
            out.par_chunks_mut(256).enumerate().for_each(|(b, o)| {
                for r in 0..rows {
                    let row = &xv[r * cols + b * 256..];
                    for (j, acc) in o.iter_mut().enumerate() {
                        *acc += row[j];
                    }
                }
            });
            Ok(Tensor::cpu_f32(out, &[cols]))
        },
        || {
            // Many rows: first blocks of 32 rows in parallel, then the block sums.
            let ctx = gpu::context()?;
            let col_sum = |x: &Tensor, rows: usize, block: usize| -> Result<Tensor> {
                let out_rows = rows.div_ceil(block).max(1);
                let out = ctx.alloc((out_rows * cols) as u64 * 4);
                let params = params("sum_rows", rows, cols, x.numel(), x.offset(), 0.0, block)?;
                ctx.dispatch(&KERNEL, "col_sum", &params, &[x.gpu(), &out], grid_for(out_rows * cols))?;
                Ok(Tensor::from_gpu(out, &[out_rows, cols], Precision::FP32))
            };
            let (x, rows) = match rows > 64 {
                true => (col_sum(&x, rows, 32)?, rows.div_ceil(32)),
                false => (x.clone(), rows),
            };
            col_sum(&x, rows, rows.max(1))?.view(&[cols])
        },
    )
}
