//! Softmax over the last dim (numerically stable), with an internal causal variant for attention.

use super::{float_input, on_device, same_device};
use crate::autograd::record;
use crate::device::cpu;
use crate::device::gpu::{self, grid, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel =
    Kernel { name: "softmax", source: include_str!("softmax.wgsl"), params: &SoftmaxParams::LAYOUT, codes: &[] };

kernel_params! {
    /// softmax.wgsl's Params.
    pub(crate) struct SoftmaxParams {
        rows: u32,
        cols: u32,
        x_off: u32,
        dy_off: u32,
        causal: u32,
        tq: u32,
        shift: u32,
    }
}

/// Which entries of a row take part. `Causal { tq, shift }`: the rows are query positions
/// t = row % tq, and row t keeps columns j <= t + shift; the rest come out as exactly 0.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mask {
    None,
    Causal { tq: usize, shift: usize },
}

impl Mask {
    /// Columns kept in row `r` of a `cols`-wide matrix.
    fn valid(self, r: usize, cols: usize) -> usize {
        match self {
            Mask::None => cols,
            Mask::Causal { tq, shift } => (r % tq + shift + 1).min(cols),
        }
    }

    /// The kernel's params for `rows` of `cols` at element offsets `x_off` and `dy_off`.
    fn params(self, op: &str, rows: usize, cols: usize, x_off: usize, dy_off: usize) -> Result<SoftmaxParams> {
        let (causal, tq, shift) = match self {
            Mask::None => (0, 1, 0),
            Mask::Causal { tq, shift } => (1, tq, shift),
        };
        Ok(SoftmaxParams {
            rows: to_u32(op, "rows", rows)?,
            cols: to_u32(op, "cols", cols)?,
            x_off: to_u32(op, "offset", x_off)?,
            dy_off: to_u32(op, "dy offset", dy_off)?,
            causal,
            tq: to_u32(op, "query length", tq)?,
            shift: to_u32(op, "mask shift", shift)?,
        })
    }
}

/// softmax(x) over the last dim: y = exp(x - max) / Σ exp(x - max).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_masked(x, Mask::None)
}

/// Softmax with `mask` applied (masked entries get probability 0 and no gradient).
pub(crate) fn softmax_masked(x: &Tensor, mask: Mask) -> Result<Tensor> {
    let x = float_input("softmax", x)?;
    let cols = match x.shape().last() {
        Some(&c) if c > 0 => c,
        _ => bail!(Shape, "softmax: needs a non-empty last dim, got shape {:?}", x.shape()),
    };
    let rows = x.numel() / cols;
    if let Mask::Causal { tq, .. } = mask {
        if tq == 0 || rows % tq != 0 {
            bail!(Shape, "softmax: causal rows of {tq} queries do not tile shape {:?}", x.shape());
        }
    }
    let y = forward(&x, rows, cols, mask)?;
    let ys = y.clone();
    Ok(record("softmax", y, &[&x], move |dy| Ok(vec![Some(backward(&ys, dy, rows, cols, mask)?)])))
}

// x: [rows, cols] -> y: [rows, cols]
fn forward(x: &Tensor, rows: usize, cols: usize, mask: Mask) -> Result<Tensor> {
    on_device(
        "softmax",
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            let out = cpu::par_rows_new(rows * cols, cols, |r, y| {
                let n = mask.valid(r, cols);
                let xs = &xv[r * cols..r * cols + n];
                let m = cpu::max(xs);
                y[..n].iter_mut().zip(xs).for_each(|(o, &v)| *o = cpu::exp(v - m));
                let inv = 1.0 / cpu::sum(&y[..n]);
                y[..n].iter_mut().for_each(|o| *o *= inv);
            });
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc((rows * cols) as u64 * 4);
            let params = mask.params("softmax", rows, cols, x.offset(), 0)?;
            ctx.dispatch(&KERNEL, "softmax", &params, &[x.gpu(), &out], grid(rows as u32))?;
            Ok(Tensor::from_gpu(out, x.shape(), Precision::FP32))
        },
    )
}

/// dx = y * (dy - Σ dy·y) per row (masked entries have y = 0, so dx = 0 there).
fn backward(y: &Tensor, dy: &Tensor, rows: usize, cols: usize, mask: Mask) -> Result<Tensor> {
    let dy = float_input("softmax backward", dy)?;
    on_device(
        "softmax_backward",
        same_device("softmax backward", &[y, &dy])?,
        || {
            let (yr, dyr) = (y.cpu(), dy.cpu());
            let (yv, dyv) = (yr.f32(), dyr.f32());
            let out = cpu::par_rows_new(rows * cols, cols, |r, dx| {
                let n = mask.valid(r, cols);
                let (ys, dys) = (&yv[r * cols..r * cols + n], &dyv[r * cols..r * cols + n]);
                let dot: f32 = ys.iter().zip(dys).map(|(a, b)| a * b).sum();
                for ((o, &yy), &d) in dx.iter_mut().zip(ys).zip(dys) {
                    *o = yy * (d - dot);
                }
            });
            Ok(Tensor::cpu_f32(out, y.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc((rows * cols) as u64 * 4);
            let params = mask.params("softmax backward", rows, cols, y.offset(), dy.offset())?;
            ctx.dispatch(&KERNEL, "softmax_backward", &params, &[y.gpu(), &out, dy.gpu()], grid(rows as u32))?;
            Ok(Tensor::from_gpu(out, y.shape(), Precision::FP32))
        },
    )
}
