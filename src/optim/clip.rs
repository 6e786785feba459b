//! Gradient clipping by the global L2 norm (PyTorch's `clip_grad_norm_`).

use crate::device::cpu::CHUNK;
use crate::device::gpu::{self, grid, Kernel};
use crate::ops::{grid_for, on_device, same_device};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel = Kernel { name: "clip", source: include_str!("clip.wgsl") };

/// Elements per workgroup of `sumsq` (PER_GROUP in clip.wgsl).
const PER_GROUP: usize = 4096;

/// sqrt(Σ g²) over all elements of all `grads` (f32). On the GPU: one readback in all.
pub fn global_norm(grads: &[Tensor]) -> Result<f32> {
    if grads.is_empty() {
        return Ok(0.0);
    }
    let device = same_device("global_norm", &grads.iter().collect::<Vec<_>>())?;
    for g in grads {
        if g.dtype() != Precision::FP32 {
            bail!(Dtype, "global_norm: gradients must be f32, got {} {:?}", g.dtype().name(), g.shape());
        }
    }
    on_device(
        "global_norm",
        device,
        || {
            // Fixed chunks summed in order: the same result on every run.
            let mut total = 0.0f64;
            for g in grads {
                let r = g.cpu();
                let parts: Vec<f64> =
                    r.f32().par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum()).collect();
                total += parts.iter().sum::<f64>();
            }
            Ok(total.sqrt() as f32)
        },
        || {
            let ctx = gpu::context()?;
            let groups: Vec<usize> = grads.iter().map(|g| g.numel().div_ceil(PER_GROUP)).collect();
            let slots: usize = groups.iter().sum();
            // Slot 0 gets the total; tensor k's partial sums follow those of tensors before it.
            let part = ctx.zeros((1 + slots) as u64 * 4);
            let mut base = 1;
            for (g, &n_groups) in grads.iter().zip(&groups) {
                if n_groups > 0 {
                    let params = [g.numel() as u32, g.offset() as u32, base as u32, 0];
                    ctx.dispatch(&KERNEL, "sumsq", &params, &[g.gpu(), &part], grid(n_groups as u32));
                }
                base += n_groups;
            }
            ctx.dispatch(&KERNEL, "total", &[slots as u32, 0, 0, 0], &[&part], [1, 1, 1]);
            let bytes = ctx.read(&part, 0, 4);
            Ok(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]).sqrt())
        },
    )
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
            let n = g.numel();
            let params = [n as u32, g.offset() as u32, 0, s.to_bits()];
            ctx.dispatch(&KERNEL, "scale", &params, &[g.gpu()], grid_for(n));
            Ok(())
        },
    )
}
