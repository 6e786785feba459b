//! Cross-entropy: on materialised logits, and fused with the output projection so the
//! [N, V] logits never exist (they are made a chunk of rows at a time).

use super::elementwise::mul_into;
use super::matmul::matmul_into;
use super::{concat, float_input, grid_for, matmul_t, on_device, same_device, scale, slice, sum_all};
use crate::autograd::{is_grad_enabled, no_grad, record};
use crate::device::cpu;
use crate::device::gpu::{self, grid, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel = Kernel {
    name: "cross_entropy",
    source: include_str!("cross_entropy.wgsl"),
    params: &CrossEntropyParams::LAYOUT,
    codes: &[],
};

kernel_params! {
    /// cross_entropy.wgsl's Params.
    pub(crate) struct CrossEntropyParams {
        rows: u32,
        cols: u32,
        r0: u32,
        x_off: u32,
        t_off: u32,
        flags: u32,
        ignore: u32,
        scale: f32,
        dy_off: u32,
    }
}

/// Mean over rows not ignored of -log softmax(logits)[target].
/// logits: [N, V] (f32 or bf16), targets: u32 [N]; returns shape []. Targets >= V that are
/// not `ignore_index` are an error. With every row ignored the loss and gradient are 0.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, ignore_index: Option<u32>) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let logits = float_input(OP, logits)?;
    let &[n, v] = logits.shape() else {
        bail!(Shape, "{OP}: logits must be [N, V], got {:?}", logits.shape());
    };
    let rows = Rows::new(OP, targets, n, v, ignore_index)?;
    let device = same_device(OP, &[&logits, targets])?;
    let (lse, loss) = no_grad(|| -> Result<_> {
        let (lse, row_loss) =
            (Tensor::zeros_on(&[n], Precision::FP32, device), Tensor::zeros_on(&[n], Precision::FP32, device));
        row_loss_of(&logits, 0, &lse, &row_loss, &rows, false)?;
        Ok((lse, sum_all(&row_loss)?))
    })?;
    let x = logits.clone();
    // softmax_grad overwrites its input: it gets a copy of the caller's logits.
    Ok(record(OP, loss, &[&logits], move |dy| Ok(vec![Some(softmax_grad(scale(&x, 1.0)?, &lse, &rows, dy)?)])))
}

/// `cross_entropy(hidden · weightᵀ, targets, ignore_index)` without the [N, V] logits:
/// hidden: [N, C], weight: [V, C] (f32 or bf16 storage), targets: u32 [N]; returns shape [].
/// Works a chunk of whole rows of logits at a time, about 2^23 logits (32 MiB) a chunk: on a
/// 2-core CPU a seed-tiny forward and backward (N 4096, C 256, V 32000) took 1.4–1.8 s with
/// 2^23, 1.7–1.9 with 2^24, 1.7–1.9 with 2^22 and 2.6 with 2^21 (the CPU: see `cpu_rows`). When gradients are wanted
/// they are made in the forward, while each chunk's logits exist (one pass gives the loss
/// and d hidden): three products with the weight, not the four of recomputing the logits in
/// the backward, which then only multiplies them by d loss / N. They are held from forward to
/// backward.
pub fn fused_linear_cross_entropy(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
) -> Result<Tensor> {
    let v = weight.shape().first().copied().unwrap_or(1).max(1);
    // A multiple of 64 rows: whole matmul tiles, and 4-aligned GPU matmuls, which alone split K
    // (other row counts leave the hidden gradient's matmul a few workgroups: docs/PERFORMANCE.md).
    let rows = match (1 << 23) / v {
        r if r >= 64 => r / 64 * 64,
        r => (r / 4 * 4).max(1),
    };
    // And a chunk's logits within one GPU binding (2 GiB on Vulkan with NVIDIA: only a small
    // IRONTENSOR_MAX_BINDING makes this bind).
    let rows = match gpu::started().filter(|_| hidden.device() == crate::Device::Gpu) {
        Some(ctx) => rows.min((ctx.max_binding() as usize / (4 * v)).max(1)),
        None => cpu_rows(hidden.shape().first().copied().unwrap_or(1), v),
    };
    fused_linear_cross_entropy_chunked(hidden, weight, targets, ignore_index, rows)
}

/// Rows of logits a CPU chunk of the fused cross-entropy holds: under 2^23 logits (32 MiB, where
/// glibc maps each block afresh, page fault by page fault), a multiple of 64 where it can be, and
/// the n rows shared evenly between the chunks (shakespeare's 2048 × 4096: two of 1024, not 1984
/// and 64).
fn cpu_rows(n: usize, v: usize) -> usize {
    let most = match ((1 << 23) - 1) / v {
        r if r >= 64 => r / 64 * 64,
        r => r.max(1),
    };
    let chunks = n.div_ceil(most).max(1);
    match n.div_ceil(chunks) {
        r if most >= 64 => (r.div_ceil(64) * 64).min(most),
        r => r,
    }
}

/// `fused_linear_cross_entropy` with an explicit chunk: `rows` rows of logits at once.
pub fn fused_linear_cross_entropy_chunked(
    hidden: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    ignore_index: Option<u32>,
    rows: usize,
) -> Result<Tensor> {
    const OP: &str = "fused_linear_cross_entropy";
    let hidden = float_input(OP, hidden)?;
    let (&[n, c], &[v, cw]) = (hidden.shape(), weight.shape()) else {
        bail!(
            Shape,
            "{OP}: hidden must be [N, C] and weight [V, C], got {:?} and {:?}",
            hidden.shape(),
            weight.shape()
        );
    };
    if c != cw || v == 0 || rows == 0 {
        bail!(
            Shape,
            "{OP}: hidden {:?} and weight {:?} must share C, with V > 0 (chunk of {rows} rows)",
            hidden.shape(),
            weight.shape()
        );
    }
    if weight.dtype() == Precision::U32 {
        bail!(Dtype, "{OP}: weight must be f32 or bf16, got u32");
    }
    let tr = Rows::new(OP, targets, n, v, ignore_index)?;
    let device = same_device(OP, &[&hidden, weight, targets])?;
    let grad = |t: &Tensor| is_grad_enabled() && t.tracks_grad();
    let (need_dh, need_dw) = (grad(&hidden), grad(weight));
    let w = float_input(OP, weight)?; // bf16 storage is widened once, not per chunk
    let (loss, dh, dw) = no_grad(|| -> Result<_> {
        let zeros = |shape: &[usize]| Tensor::zeros_on(shape, Precision::FP32, device);
        let (lse, row_loss) = (zeros(&[n]), zeros(&[n]));
        let dh = need_dh.then(|| zeros(&[n, c]));
        let dw = need_dw.then(|| zeros(&[v, c]));
        // Blocks of the vocabulary: one, unless the weight is larger than one GPU binding; then
        // each block's logits are made apart and joined, and its products taken apart.
        let blocks = vocab_blocks(device, v, c)?;
        let block = |t: &Tensor, dim: usize, (v0, len): (usize, usize)| match blocks.len() {
            1 => Ok(t.clone()),
            _ => slice(t, dim, v0, len),
        };
        for r0 in (0..n).step_by(rows) {
            let h = slice(&hidden, 0, r0, rows.min(n - r0))?;
            let parts: Vec<Tensor> =
                blocks.iter().map(|&b| matmul_t(&h, &block(&w, 0, b)?, false, true)).collect::<Result<_>>()?;
            let logits = match &parts[..] {
                [one] => one.clone(),
                _ => concat(&parts.iter().collect::<Vec<_>>(), 1)?,
            }; // [rows, V]
            row_loss_of(&logits, r0, &lse, &row_loss, &tr, need_dh || need_dw)?;
            for (i, &b) in blocks.iter().enumerate() {
                let d_logits = block(&logits, 1, b)?;
                if let Some(dh) = &dh {
                    matmul_into(&slice(dh, 0, r0, h.shape()[0])?, &d_logits, &block(&w, 0, b)?, false, false, i > 0)?;
                }
                if let Some(dw) = &dw {
                    matmul_into(&block(dw, 0, b)?, &d_logits, &h, true, false, r0 > 0)?;
                }
            }
        }
        Ok((sum_all(&row_loss)?, dh, dw))
    })?;
    let mean = tr.scale;
    Ok(record(OP, loss, &[&hidden, weight], move |dy| {
        // The graph runs this once: scaling the held gradients in place is safe.
        let k = scale(dy, mean)?;
        for g in dh.iter().chain(&dw) {
            mul_into(g, &k)?;
        }
        Ok(vec![dh.clone(), dw.clone()])
    }))
}

/// (first row, rows) of each block of a [V, C] f32 weight that one GPU binding holds: one block
/// on the CPU, or when the whole weight fits.
fn vocab_blocks(device: crate::Device, v: usize, c: usize) -> Result<Vec<(usize, usize)>> {
    let max = match device {
        crate::Device::Gpu => gpu::context()?.max_binding() as usize,
        crate::Device::Cpu => usize::MAX,
    };
    if v.saturating_mul(c).saturating_mul(4) <= max {
        return Ok(vec![(0, v)]);
    }
    let rows = (max - 256) / (4 * c);
    if rows == 0 {
        bail!(Shape, "fused_linear_cross_entropy: one row of {c} f32 is larger than the GPU binds at once");
    }
    Ok((0..v).step_by(rows).map(|v0| (v0, rows.min(v - v0))).collect())
}

/// What the kernels need to know about the targets.
struct Rows {
    targets: Tensor,
    /// Never a valid target when there is no ignore index (targets are < V <= u32::MAX).
    ignore: u32,
    /// 1 / rows not ignored, or 0 when every row is.
    scale: f32,
}

impl Rows {
    /// Checks targets on the host, before any kernel runs (on the host copy of targets uploaded
    /// from the host: no GPU round trip).
    fn new(op: &str, targets: &Tensor, n: usize, v: usize, ignore: Option<u32>) -> Result<Rows> {
        if targets.dtype() != Precision::U32 || targets.shape() != [n] {
            bail!(Shape, "{op}: targets must be u32 [{n}], got {} {:?}", targets.dtype().name(), targets.shape());
        }
        if n == 0 || v == 0 {
            bail!(Shape, "{op}: needs at least one row and one class, got N = {n}, V = {v}");
        }
        let mut count = 0usize;
        for (r, t) in targets.to_vec_u32().into_iter().enumerate() {
            if Some(t) == ignore {
                continue;
            }
            if t as usize >= v {
                bail!(
                    Invalid,
                    "{op}: target {t} at row {r} is outside the vocabulary of {v} (ignore_index {ignore:?})"
                );
            }
            count += 1;
        }
        Ok(Rows {
            targets: targets.clone(),
            ignore: ignore.unwrap_or(u32::MAX),
            scale: if count == 0 { 0.0 } else { 1.0 / count as f32 },
        })
    }

    /// The kernels' Params for logits x from batch row r0, the gradient scaled by `scale`.
    fn params(&self, x: &Tensor, r0: usize, flags: u32, scale: f32, dy_off: usize) -> Result<CrossEntropyParams> {
        let &[rows, cols] = x.shape() else { unreachable!("logits are 2-D") };
        let u = |what, v| to_u32("cross_entropy", what, v);
        Ok(CrossEntropyParams {
            rows: u("rows", rows)?,
            cols: u("vocabulary", cols)?,
            r0: u("first row", r0)?,
            x_off: u("logits offset", x.offset())?,
            t_off: u("targets offset", self.targets.offset())?,
            flags,
            ignore: self.ignore,
            scale,
            dy_off: u("dy offset", dy_off)?,
        })
    }
}

/// Row r of the logits x: [rows, V] is batch row r0 + r: writes its log-sum-exp to lse and its
/// loss (lse - x[target]) · scale to row_loss; with `grad`, x becomes softmax - onehot (0 on
/// ignored rows), from the same exponentials on the CPU. Not yet times scale: with f16 matmuls
/// (IRONTENSOR_MATMUL=coop) those values go through f16, where 1/N would push them under its
/// range, and the loss scale that keeps them in range only arrives with d loss, in the backward.
fn row_loss_of(x: &Tensor, r0: usize, lse: &Tensor, row_loss: &Tensor, rows: &Rows, grad: bool) -> Result<()> {
    let &[n, cols] = x.shape() else { unreachable!("logits are 2-D") };
    on_device(
        "cross_entropy",
        x.device(),
        || {
            let tr = rows.targets.cpu();
            let tv = &tr.u32()[r0..r0 + n];
            let (mut lw, mut rw) = (lse.cpu_mut(), row_loss.cpu_mut());
            let (lv, rv) = (&mut lw.f32()[r0..r0 + n], &mut rw.f32()[r0..r0 + n]);
            let mut xw = x.cpu_mut();
            xw.f32().par_chunks_mut(cols).zip(lv).zip(rv).zip(tv).for_each(|(((row, lse), loss), &t)| {
                cpu::simd(
                    #[inline(always)]
                    || {
                        let m = cpu::max(row);
                        let xt = row.get(t as usize).copied().unwrap_or(0.0); // no row when ignored
                        if grad {
                            row.iter_mut().for_each(|v| *v = cpu::exp(*v - m));
                            let sum = cpu::sum(row);
                            *lse = m + sum.ln();
                            if t == rows.ignore {
                                row.fill(0.0);
                            } else {
                                let k = 1.0 / sum;
                                row.iter_mut().for_each(|v| *v *= k);
                                row[t as usize] -= 1.0;
                            }
                        } else {
                            let sum = row.iter().fold(0.0, |s, &v| s + cpu::exp(v - m));
                            *lse = m + sum.ln();
                        }
                        *loss = if t == rows.ignore { 0.0 } else { (*lse - xt) * rows.scale };
                    },
                )
            });
            Ok(())
        },
        || {
            let ctx = gpu::context()?;
            let buffers = [x.gpu(), rows.targets.gpu(), lse.gpu(), row_loss.gpu()];
            let params = rows.params(x, r0, 0, rows.scale, 0)?;
            ctx.dispatch(&KERNEL, "row_loss", &params, &buffers, grid(n as u32))?;
            if grad {
                let params = rows.params(x, r0, 0, 1.0, 0)?; // unscaled: see above
                ctx.dispatch(&KERNEL, "softmax_grad", &params, &buffers, grid_for(n * cols))?;
            }
            Ok(())
        },
    )
}

/// d logits for x: [N, V], given their log-sum-exp: (softmax - onehot) · scale · dy, written over x
/// (a temporary the caller gives up).
fn softmax_grad(x: Tensor, lse: &Tensor, rows: &Rows, dy: &Tensor) -> Result<Tensor> {
    let &[n, cols] = x.shape() else { unreachable!("logits are 2-D") };
    let dy = float_input("cross_entropy backward", dy)?;
    on_device(
        "cross_entropy_backward",
        same_device("cross_entropy backward", &[&x, &dy])?,
        || {
            let (tr, lr) = (rows.targets.cpu(), lse.cpu());
            let (tv, lv) = (tr.u32(), lr.f32());
            let g = dy.cpu().f32()[0] * rows.scale;
            let mut xw = x.cpu_mut();
            cpu::par_rows(xw.f32(), cols, |r, o| {
                if tv[r] == rows.ignore {
                    o.fill(0.0);
                    return;
                }
                o.iter_mut().for_each(|v| *v = cpu::exp(*v - lv[r]) * g);
                o[tv[r] as usize] -= g;
            });
            Ok(())
        },
        || {
            let ctx = gpu::context()?;
            let params = rows.params(&x, 0, 1, rows.scale, dy.offset())?;
            ctx.dispatch(
                &KERNEL,
                "softmax_grad",
                &params,
                &[x.gpu(), rows.targets.gpu(), lse.gpu(), dy.gpu()],
                grid_for(n * cols),
            )?;
            Ok(())
        },
    )?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    /// CPU chunks stay under 2^23 logits, cover the rows in chunks of one size (the last may be
    /// shorter), and are whole 64-row tiles where a tile fits.
    #[test]
    fn cpu_chunk_rows() {
        assert_eq!(super::cpu_rows(2048, 4096), 1024);
        assert_eq!(super::cpu_rows(2048, 32000), 256);
        assert_eq!(super::cpu_rows(4096, 32000), 256);
        for (n, v) in
            [(1, 1), (7, 3), (2048, 4096), (2047, 4096), (300, 32000), (5, 1 << 20), (9, 1 << 24), (1000, 131)]
        {
            let rows = super::cpu_rows(n, v);
            assert!(rows >= 1 && (rows * v < 1 << 23 || rows == 1), "{n}×{v}: {rows} rows");
            assert!(rows.is_multiple_of(64) || v > (1 << 23) / 64, "{n}×{v}: {rows} rows");
            let chunks = n.div_ceil(rows);
            assert!(chunks * rows - n < rows.max(64), "{n}×{v}: {rows} rows leave a short last chunk");
        }
    }
}
