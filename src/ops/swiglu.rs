//! SwiGLU's gate, silu(gate) * up, fused: one pass forward and one backward (the FFN's activation).

use super::{float_input, grid_for, on_device, same_device};
use crate::autograd::record;
use crate::device::cpu::{par_fill, CHUNK};
use crate::device::gpu::{self, Kernel};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel = Kernel { name: "swiglu", source: include_str!("swiglu.wgsl") };

/// gate, up: [.., F] (same shape) -> silu(gate) * up (f32), as `mul(silu(gate), up)` computes it.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (gate, up) = (float_input("swiglu", gate)?, float_input("swiglu", up)?);
    let device = same_device("swiglu", &[&gate, &up])?;
    if gate.shape() != up.shape() {
        bail!(Shape, "swiglu: gate and up must have the same shape, got {:?} and {:?}", gate.shape(), up.shape());
    }
    let n = gate.numel();
    let out = on_device(
        "swiglu",
        device,
        || {
            let (gr, ur) = (gate.cpu(), up.cpu());
            let (gv, uv) = (gr.f32(), ur.f32());
            let mut out = vec![0.0; n];
            par_fill(&mut out, |i| silu(gv[i]) * uv[i]);
            Ok(Tensor::cpu_f32(out, gate.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let params = [n as u32, gate.offset() as u32, up.offset() as u32, 0];
            ctx.dispatch(&KERNEL, "forward", &params, &[gate.gpu(), up.gpu(), &out], grid_for(n));
            Ok(Tensor::from_gpu(out, gate.shape(), Precision::FP32))
        },
    )?;
    let (g, u) = (gate.clone(), up.clone());
    Ok(record("swiglu", out, &[&gate, &up], move |dy| {
        let (dgate, dup) = backward(&g, &u, dy)?;
        Ok(vec![Some(dgate), Some(dup)])
    }))
}

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// dgate = dy·up·silu'(gate), dup = dy·silu(gate), in one pass.
fn backward(gate: &Tensor, up: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dy = float_input("swiglu backward", dy)?;
    let n = gate.numel();
    on_device(
        "swiglu_backward",
        same_device("swiglu backward", &[gate, &dy])?,
        || {
            let (gr, ur, dr) = (gate.cpu(), up.cpu(), dy.cpu());
            let (gv, uv, dv) = (gr.f32(), ur.f32(), dr.f32());
            let (mut dgate, mut dup) = (vec![0.0; n], vec![0.0; n]);
            dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (dg, du))| {
                for (j, (dg, du)) in dg.iter_mut().zip(du).enumerate() {
                    let i = c * CHUNK + j;
                    let (g, d) = (gv[i], dv[i]);
                    let s = 1.0 / (1.0 + (-g).exp());
                    *dg = d * uv[i] * (s * (1.0 + g * (1.0 - s)));
                    *du = d * silu(g);
                }
            });
            Ok((Tensor::cpu_f32(dgate, gate.shape()), Tensor::cpu_f32(dup, gate.shape())))
        },
        || {
            let ctx = gpu::context()?;
            let (dgate, dup) = (ctx.alloc(n as u64 * 4), ctx.alloc(n as u64 * 4));
            let params = [n as u32, gate.offset() as u32, up.offset() as u32, dy.offset() as u32];
            ctx.dispatch(&KERNEL, "backward", &params, &[gate.gpu(), up.gpu(), &dgate, dy.gpu(), &dup], grid_for(n));
            Ok((
                Tensor::from_gpu(dgate, gate.shape(), Precision::FP32),
                Tensor::from_gpu(dup, gate.shape(), Precision::FP32),
            ))
        },
    )
}
