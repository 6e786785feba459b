//! Gradient clipping by the global L2 norm (PyTorch's `clip_grad_norm_`).

use crate::device::cpu::CHUNK;
use crate::device::gpu::{self, grid, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::ops::{flat, grid_for, on_device, same_device};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "clip", source: include_str!("clip.wgsl"), params: &ClipParams::LAYOUT, codes: &[] };

kernel_params! {
    /// clip.wgsl's Params.
    pub(crate) struct ClipParams {
        n: u32,
        off: u32,
        base: u32,
        s: f32,
        inv: f32,
    }
}

/// Elements per workgroup of `sumsq` (PER_GROUP in clip.wgsl).
const PER_GROUP: usize = 4096;

/// sqrt(Σ g²) over all elements of all `grads` (f32). On the GPU: one readback in all.
pub fn global_norm(grads: &[Tensor]) -> Result<f32> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let device = check_grads("global_norm", grads)?;
    on_device("global_norm", device, || Ok(cpu_norm(grads)), || Ok(gpu_control(grads, None, 0.0, 1.0)?.to_vec()[2]))
}

/// One step's decision, made where the gradients live so the host need not wait for it:
/// f32 [4] = (gradient scale, 1 if the update applies else 0, global norm, loss).
/// The scale is max_norm / (norm + 1e-6) when that is below 1 (`clip_grad_norm`'s factor; 1
/// when max_norm is 0); the update applies when the loss ([] or [1]) and the norm are finite.
/// The optimizers' `step_controlled` read it in their update kernels.
pub fn step_control(grads: &[Tensor], loss: &Tensor, max_norm: f32) -> Result<Tensor> {
    step_control_scaled(grads, loss, max_norm, 1.0)
}

/// `step_control` for gradients of a loss multiplied by `loss_scale` (loss scaling, for f16
/// matmuls): the norm is that of the gradients divided by it, and the gradient scale includes
/// 1 / loss_scale, so the update sees the true gradients. A scaled gradient that overflowed makes
/// the norm infinite: the step is skipped.
pub fn step_control_scaled(grads: &[Tensor], loss: &Tensor, max_norm: f32, loss_scale: f32) -> Result<Tensor> {
    let device = check_grads("step_control", grads)?;
    if !(loss_scale.is_finite() && loss_scale > 0.0) {
        bail!(Invalid, "step_control: the loss scale must be finite and > 0, got {loss_scale}");
    }
    if loss.numel() != 1 || loss.dtype() != Precision::FP32 || loss.device() != device {
        bail!(
            Invalid,
            "step_control: the loss must be one f32 on the gradients' device, got {:?} {} on {}",
            loss.shape(),
            loss.dtype().name(),
            loss.device().name()
        );
    }
    on_device(
        "step_control",
        device,
        || {
            let (norm, loss) = (cpu_norm(grads) / loss_scale, loss.item()?);
            let ok = norm.is_finite() && loss.is_finite();
            let coef = max_norm / (norm + 1e-6);
            let scale = if max_norm > 0.0 && ok && coef < 1.0 { coef } else { 1.0 };
            Ok(Tensor::cpu_f32(vec![scale / loss_scale, ok as u32 as f32, norm, loss], &[4]))
        },
        || gpu_control(grads, Some(loss), max_norm, loss_scale),
    )
}

/// The device of `grads`, checked to be f32 and on one device.
fn check_grads(op: &str, grads: &[Tensor]) -> Result<crate::Device> {
    let Some(first) = grads.first() else { bail!(Invalid, "{op}: no gradients") };
    same_device(op, &grads.iter().collect::<Vec<_>>())?;
    for g in grads {
        if g.dtype() != Precision::FP32 {
            bail!(Dtype, "{op}: gradients must be f32, got {} {:?}", g.dtype().name(), g.shape());
        }
    }
    Ok(first.device())
}

/// Fixed chunks summed in order: the same result on every run. Within a chunk, eight running
/// sums (element j into sum j % 8) added at the end: one running sum is a chain of dependent
/// adds that does not vectorise (6 ms a step for shakespeare's 12.2M gradients on 2 cores).
fn cpu_norm(grads: &[Tensor]) -> f32 {
    let mut total = 0.0f64;
    for g in grads {
        let r = g.cpu();
        let parts: Vec<f64> = r.f32().par_chunks(CHUNK).map(squares).collect();
        total += parts.iter().sum::<f64>();
    }
    total.sqrt() as f32
}

/// Σ v² of a chunk in f64, in eight lanes.
fn squares(c: &[f32]) -> f64 {
    crate::device::cpu::simd(
        #[inline(always)]
        || {
            let mut acc = [0.0f64; 8];
            let blocks = c.chunks_exact(8);
            for (a, &v) in acc.iter_mut().zip(blocks.remainder()) {
                *a += (v as f64) * (v as f64);
            }
            for b in blocks {
                for (a, &v) in acc.iter_mut().zip(b) {
                    *a += (v as f64) * (v as f64);
                }
            }
            acc.iter().sum()
        },
    )
}

/// The step control on the GPU: partial sums of squares of every gradient (one dispatch per
/// run of gradients sharing a buffer: one in all for a trainer's flat gradients, and one per
/// binding-sized piece of a gradient larger than one binding), then one workgroup that totals
/// them and decides. Slots 0..4 of the partial-sums buffer become the control; the loss (or 0)
/// is copied into slot 3 first.
fn gpu_control(grads: &[Tensor], loss: Option<&Tensor>, max_norm: f32, loss_scale: f32) -> Result<Tensor> {
    let ctx = gpu::context()?;
    // Dispatches as (gradient, bound from byte, [element offset there, length] of each segment).
    let mut dispatches: Vec<(&Tensor, u64, Vec<[usize; 2]>)> = Vec::new();
    for run in flat::runs(grads.len(), |a, k| grads[a].shares_storage(&grads[k])) {
        let g = &grads[run.start];
        if g.gpu().buffer.size() <= ctx.max_binding() {
            dispatches.push((g, 0, run.map(|k| [grads[k].offset(), grads[k].numel()]).collect()));
            continue;
        }
        let len = (ctx.max_binding() as usize - 256) / 4;
        for run_k in run {
            let g = &grads[run_k];
            for first in (0..g.numel()).step_by(len) {
                let (start, off) = gpu::window(g.offset() + first, 4);
                dispatches.push((g, start, vec![[off, len.min(g.numel() - first)]]));
            }
        }
    }
    let slots: usize = dispatches.iter().flat_map(|d| &d.2).map(|[_, n]| n.div_ceil(PER_GROUP)).sum();
    let part = ctx.zeros((4 + slots) as u64 * 4);
    let mut base = 4;
    for (g, start, segments) in dispatches {
        let (count, mut table) = (segments.len(), Vec::with_capacity(4 * segments.len()));
        let mut first = 0;
        for [off, n] in segments {
            table.extend([off, n, first, 0].map(|v| v as u32));
            first += n.div_ceil(PER_GROUP);
        }
        if first > 0 {
            let table = ctx.upload(bytemuck::cast_slice::<u32, u8>(&table));
            let params = ClipParams {
                n: to_u32("global_norm", "tensors", count)?,
                base: to_u32("global_norm", "partial sums", base)?,
                ..Default::default()
            };
            let buffers = [(g.gpu(), start), (&part, 0), (&table, 0)];
            ctx.dispatch_windows(&KERNEL, "sumsq", &params, &buffers, grid(first as u32))?;
        }
        base += first;
    }
    if let Some(loss) = loss {
        let (src, dst) = (&loss.gpu().buffer, &part.buffer);
        ctx.record(|enc| enc.copy_buffer_to_buffer(src, loss.offset() as u64 * 4, dst, 12, 4));
    }
    let params = ClipParams {
        n: to_u32("step_control", "partial sums", slots)?,
        s: max_norm,
        inv: 1.0 / loss_scale,
        ..Default::default()
    };
    ctx.dispatch(&KERNEL, "control", &params, &[&part], [1, 1, 1])?;
    let part = Tensor::from_gpu(part, &[4 + slots], Precision::FP32);
    crate::ops::slice(&part, 0, 0, 4)
}

/// Scales `grads` in place by max_norm / (norm + 1e-6) when their global norm is above
/// `max_norm`; returns the norm before clipping (NaN or inf norms leave the grads as they are).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f32) -> Result<f32> {
    let norm = global_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if norm.is_finite() && coef < 1.0 {
        for g in grads {
            scale_in_place(g, coef)?;
        }
    }
    Ok(norm)
}

fn scale_in_place(g: &Tensor, s: f32) -> Result<()> {
    on_device(
        "clip_scale",
        g.device(),
        || {
            g.cpu_mut().f32().par_iter_mut().for_each(|v| *v *= s);
            Ok(())
        },
        || {
            let ctx = gpu::context()?;
            // Pieces that one binding holds (all of g unless it is larger than one).
            let len = (ctx.max_binding() as usize - 256) / 4;
            for first in (0..g.numel()).step_by(len) {
                let (start, off) = gpu::window(g.offset() + first, 4);
                let n = len.min(g.numel() - first);
                let params = ClipParams {
                    n: to_u32("clip_grad_norm", "elements", n)?,
                    off: to_u32("clip_grad_norm", "offset", off)?,
                    s,
                    ..Default::default()
                };
                ctx.dispatch_windows(&KERNEL, "scale", &params, &[(g.gpu(), start)], grid_for(n))?;
            }
            Ok(())
        },
    )
}
