//! Casts between FP32 and BF16 storage (round to nearest even). The gradient passes through as f32.

use super::{grid_for, on_device};
use crate::autograd::record;
use crate::device::cpu::CpuBuffer;
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use half::bf16;
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "cast", source: include_str!("cast.wgsl"), params: &CastParams::LAYOUT, codes: &[] };

kernel_params! {
    /// cast.wgsl's Params.
    pub(crate) struct CastParams {
        n: u32,
        x_off: u32,
    }
}

/// `x` converted to `to` (FP32 or BF16); the same tensor if it already is.
pub fn cast(x: &Tensor, to: Precision) -> Result<Tensor> {
    let from = x.dtype();
    if from == to {
        return Ok(x.clone());
    }
    if from == Precision::U32 || to == Precision::U32 {
        bail!(Dtype, "cast: {} -> {} is not supported (only f32 <-> bf16)", from.name(), to.name());
    }
    let n = x.numel();
    let out = on_device(
        "cast",
        x.device(),
        || {
            let r = x.cpu();
            Ok(match to {
                Precision::BF16 => {
                    let v: Vec<bf16> =
                        r.f32().par_iter().map(|&v| bf16::from_bits(crate::precision::f32_to_bf16_bits(v))).collect();
                    Tensor::from_cpu(CpuBuffer::BF16(v), x.shape())
                }
                _ => Tensor::cpu_f32(r.bf16().par_iter().map(|h| h.to_f32()).collect(), x.shape()),
            })
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc((n * to.size_bytes()) as u64);
            let entry = if to == Precision::BF16 { "f32_to_bf16" } else { "bf16_to_f32" };
            // Pieces that one binding holds, each a multiple of 128 elements (its output then
            // starts on a window boundary): one piece unless x or out is larger than one binding.
            let len = match [x.gpu(), &out].iter().any(|b| b.buffer.size() > ctx.max_binding()) {
                false => n.max(1),
                true => (ctx.max_binding() as usize - 256) / 4 / 128 * 128,
            };
            for first in (0..n).step_by(len) {
                let pn = len.min(n - first);
                let (x_start, x_off) = gpu::window(x.offset() + first, from.size_bytes());
                let params = CastParams { n: to_u32("cast", "elements", pn)?, x_off: to_u32("cast", "offset", x_off)? };
                let threads = if to == Precision::BF16 { pn.div_ceil(2) } else { pn };
                let buffers = [(x.gpu(), x_start), (&out, (first * to.size_bytes()) as u64)];
                ctx.dispatch_windows(&KERNEL, entry, &params, &buffers, grid_for(threads))?;
            }
            Ok(Tensor::from_gpu(out, x.shape(), to))
        },
    )?;
    Ok(record("cast", out, &[x], |dy| Ok(vec![Some(dy.clone())])))
}
