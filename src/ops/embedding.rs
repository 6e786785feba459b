//! Token embedding: rows of a [V, C] weight picked by u32 ids; the backward scatter-adds into dweight.

use super::{float_input, grid_for, on_device, same_device};
use crate::autograd::record;
use crate::device::cpu::{self, par_rows};
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel =
    Kernel { name: "embedding", source: include_str!("embedding.wgsl"), params: &EmbeddingParams::LAYOUT, codes: &[] };

kernel_params! {
    /// embedding.wgsl's Params.
    pub(crate) struct EmbeddingParams {
        n: u32,
        cols: u32,
        idx_off: u32,
        src_off: u32,
        bf16: u32,
        v0: u32,
        v1: u32,
        out_off: u32,
    }
}

/// Rows of a [V, C] tensor of `elem` bytes an element that one GPU binding holds, wherever the
/// first starts (after up to 256 bytes of its window).
fn rows_per_binding(op: &str, c: usize, elem: usize) -> Result<usize> {
    let rows = (gpu::context()?.max_binding() as usize - 256) / (c * elem).max(1);
    if rows == 0 {
        bail!(Invalid, "{op}: one row of {c} elements is larger than the GPU binds at once");
    }
    Ok(rows)
}

/// ids: u32 [..], weight: [V, C] (F32 or BF16) -> [.., C] (f32). Ids >= V are an error,
/// checked on the host before any kernel runs (ids uploaded from the host are checked on that
/// copy; other GPU ids are read back).
/// The gradient flows to `weight` (as f32, also for a BF16 weight); ids get none.
pub fn embedding(ids: &Tensor, weight: &Tensor) -> Result<Tensor> {
    if ids.dtype() != Precision::U32 {
        bail!(Dtype, "embedding: ids must be u32 token ids, got {} of shape {:?}", ids.dtype().name(), ids.shape());
    }
    let &[v, c] = weight.shape() else {
        bail!(Shape, "embedding: weight must be [V, C], got shape {:?}", weight.shape());
    };
    if weight.dtype() == Precision::U32 {
        bail!(Dtype, "embedding: weight must be f32 or bf16, got u32 of shape {:?}", weight.shape());
    }
    same_device("embedding", &[ids, weight])?;
    let host_ids = ids.to_vec_u32();
    if let Some((i, &id)) = host_ids.iter().enumerate().find(|(_, &id)| id as usize >= v) {
        bail!(
            Invalid,
            "embedding: token id {id} (at flat index {i} of ids {:?}) is out of range for a vocabulary of V = {v} (weight {:?})",
            ids.shape(),
            weight.shape()
        );
    }
    let mut out_shape = ids.shape().to_vec();
    out_shape.push(c);
    let out = gather(ids, weight, &out_shape, c)?;
    Ok(record("embedding", out, &[ids, weight], move |dy| Ok(vec![None, Some(scatter_add(dy, &host_ids, v, c)?)])))
}

/// out[tok, :] = weight[ids[tok], :]
fn gather(ids: &Tensor, weight: &Tensor, out_shape: &[usize], c: usize) -> Result<Tensor> {
    let n = crate::tensor::numel(out_shape);
    on_device(
        "embedding",
        ids.device(),
        || {
            let (ir, wr) = (ids.cpu(), weight.cpu());
            let iv = ir.u32();
            let mut out = cpu::zeros(n);
            match weight.dtype() {
                Precision::BF16 => {
                    let wv = wr.bf16();
                    par_rows(&mut out, c, |tok, row| {
                        let w = &wv[iv[tok] as usize * c..][..c];
                        row.iter_mut().zip(w).for_each(|(o, h)| *o = h.to_f32());
                    });
                }
                _ => {
                    let wv = wr.f32();
                    par_rows(&mut out, c, |tok, row| {
                        row.copy_from_slice(&wv[iv[tok] as usize * c..][..c]);
                    });
                }
            }
            Ok(Tensor::cpu_f32(out, out_shape))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let (v, elem) = (weight.shape()[0], weight.dtype().size_bytes());
            // A block of rows per dispatch (one, unless the weight is larger than one binding):
            // each writes the outputs whose ids fall in its block.
            let rows = rows_per_binding("embedding", c, elem)?;
            for v0 in (0..v).step_by(rows) {
                let (start, src_off) = gpu::window(weight.offset() + v0 * c, elem);
                let params = EmbeddingParams {
                    n: to_u32("embedding", "elements", n)?,
                    cols: to_u32("embedding", "cols", c)?,
                    idx_off: to_u32("embedding", "ids offset", ids.offset())?,
                    src_off: to_u32("embedding", "weight offset", src_off)?,
                    bf16: (weight.dtype() == Precision::BF16) as u32,
                    v0: to_u32("embedding", "first row", v0)?,
                    v1: to_u32("embedding", "rows", (v0 + rows).min(v))?,
                    out_off: 0,
                };
                let buffers = [(ids.gpu(), 0), (weight.gpu(), start), (&out, 0)];
                ctx.dispatch_windows(&KERNEL, "gather", &params, &buffers, grid_for(n))?;
            }
            Ok(Tensor::from_gpu(out, out_shape, Precision::FP32))
        },
    )
}

/// Token indices grouped by id with a counting sort (stable: token order within an id):
/// the tokens of id v are `order[starts[v]..starts[v + 1]]`. O(N + V) on the host.
fn group_by_id(ids: &[u32], v: usize) -> (Vec<u32>, Vec<u32>) {
    let mut starts = vec![0u32; v + 1];
    for &id in ids {
        starts[id as usize + 1] += 1;
    }
    for i in 0..v {
        starts[i + 1] += starts[i];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; ids.len()];
    for (tok, &id) in ids.iter().enumerate() {
        order[next[id as usize] as usize] = tok as u32;
        next[id as usize] += 1;
    }
    (starts, order)
}

/// dweight[v, :] = Σ dy[tok, :] over tokens with id v, summed in token order on both devices
/// (deterministic, no float atomics). Cost: V·C outputs written once (this is also the
/// zero-fill), N·C reads of dy, plus an O(N + V) host sort and a (V + 1 + N)·4-byte upload.
/// A thread's loop is as long as its id's count, so a very frequent id serializes a little.
fn scatter_add(dy: &Tensor, ids: &[u32], v: usize, c: usize) -> Result<Tensor> {
    let dy = float_input("embedding backward", dy)?;
    let (starts, order) = group_by_id(ids, v);
    on_device(
        "embedding_backward",
        dy.device(),
        || {
            let dr = dy.cpu();
            let dv = dr.f32();
            let dweight = cpu::par_rows_new(v * c, c, |id, row| {
                for &tok in &order[starts[id] as usize..starts[id + 1] as usize] {
                    let g = &dv[tok as usize * c..][..c];
                    row.iter_mut().zip(g).for_each(|(o, g)| *o += g);
                }
            });
            Ok(Tensor::cpu_f32(dweight, &[v, c]))
        },
        || {
            let ctx = gpu::context()?;
            let dweight = ctx.alloc((v * c) as u64 * 4);
            let order = ctx.upload(bytemuck::cast_slice(&order));
            let starts = ctx.upload(bytemuck::cast_slice(&starts));
            let rows = rows_per_binding("embedding backward", c, 4)?;
            for v0 in (0..v).step_by(rows) {
                let (start, out_off) = gpu::window(v0 * c, 4);
                let n = (rows.min(v - v0)) * c;
                let params = EmbeddingParams {
                    n: to_u32("embedding backward", "elements", n)?,
                    cols: to_u32("embedding backward", "cols", c)?,
                    src_off: to_u32("embedding backward", "dy offset", dy.offset())?,
                    v0: to_u32("embedding backward", "first row", v0)?,
                    out_off: to_u32("embedding backward", "output offset", out_off)?,
                    ..Default::default()
                };
                let buffers = [(&order, 0), (dy.gpu(), 0), (&dweight, start), (&starts, 0)];
                ctx.dispatch_windows(&KERNEL, "scatter_add", &params, &buffers, grid_for(n))?;
            }
            Ok(Tensor::from_gpu(dweight, &[v, c], Precision::FP32))
        },
    )
}
