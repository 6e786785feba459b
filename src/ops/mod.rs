//! Operations: one op family per file, each with its CPU kernel, GPU dispatch and backward rule;
//! the WGSL sits beside it. Ops compute in f32: BF16 inputs are widened first.

mod attention;
mod cast;
mod cross_entropy;
mod dropout;
mod elementwise;
mod embedding;
mod flash_attention;
mod flash_attention_cpu;
mod flash_attention_gpu;
pub(crate) mod flat;
mod layout;
mod matmul;
mod matmul_cpu;
mod matmul_gemv;
mod matmul_tiles;
mod reduce;
mod rmsnorm;
mod rope;
mod rope_freqs;
mod sample;
mod softmax;
mod swiglu;

pub use attention::attention;
pub use cast::cast;
pub use cross_entropy::{cross_entropy, fused_linear_cross_entropy, fused_linear_cross_entropy_chunked};
pub use dropout::dropout;
pub(crate) use elementwise::add_into;
pub use elementwise::{add, div, exp, gelu, log, mul, neg, relu, rsqrt, scale, silu, sqrt, sub};
pub use embedding::embedding;
pub use flash_attention::{flash_attention, flash_attention_bthd, flash_attention_cached};
pub use layout::{concat, permute, slice, transpose};
pub(crate) use matmul::prefer_f16_matmul;
pub use matmul::{coop_matmul_supported, matmul, matmul_precision, matmul_t, set_matmul_precision, MatmulPrecision};
pub use reduce::{max, max_all, mean, mean_all, sum, sum_all, sum_rows};
pub use rmsnorm::{add_rmsnorm, rmsnorm};
pub use rope::{rope, rope_qkv};
pub use rope_freqs::{Rope, RopeScaling};
pub use sample::{sample, sample_row, Sampling};
pub use softmax::softmax;
pub use swiglu::{swiglu, swiglu_halves};

use crate::device::gpu::Kernel;
use crate::{bail, Device, Precision, Result, Tensor};

/// Every WGSL source the ops use (`crate::kernels` adds the optimizers').
pub fn kernels() -> Vec<&'static Kernel> {
    vec![
        &cast::KERNEL,
        &cross_entropy::KERNEL,
        &elementwise::KERNEL,
        &dropout::KERNEL,
        &embedding::KERNEL,
        &flash_attention::KERNEL_64,
        &flash_attention::KERNEL_128,
        &flash_attention::KERNEL_COOP_64,
        &flash_attention::KERNEL_COOP_128,
        &layout::KERNEL,
        &matmul::KERNEL,
        &matmul::WIDE_KERNEL,
        &matmul::COOP_KERNEL,
        &matmul_gemv::GEMV_KERNEL,
        &reduce::KERNEL,
        &rmsnorm::KERNEL,
        &rope::KERNEL,
        &sample::KERNEL,
        &softmax::KERNEL,
        &swiglu::KERNEL,
    ]
}

/// Runs an op's kernel for `device`: `cpu` or `gpu`. Every op goes through here, so this is
/// where the profiler hooks in: it times `cpu` and names the GPU dispatches `gpu` queues
/// after `op` (one relaxed atomic load when profiling is off).
#[inline]
pub(crate) fn on_device<R>(
    op: &'static str,
    device: Device,
    cpu: impl FnOnce() -> Result<R>,
    gpu: impl FnOnce() -> Result<R>,
) -> Result<R> {
    if !crate::profile::is_enabled() {
        return match device {
            Device::Cpu => cpu(),
            Device::Gpu => gpu(),
        };
    }
    match device {
        Device::Cpu => crate::profile::time_cpu(op, cpu),
        Device::Gpu => crate::profile::on_gpu(op, gpu),
    }
}

/// The device all `inputs` live on, or an error naming the op.
pub(crate) fn same_device(op: &str, inputs: &[&Tensor]) -> Result<Device> {
    let d = inputs[0].device();
    if let Some(t) = inputs.iter().find(|t| t.device() != d) {
        bail!(
            Device,
            "{op}: inputs are on different devices ({} and {}); move them with to_device",
            d.name(),
            t.device().name()
        );
    }
    Ok(d)
}

/// `t` as f32: BF16 is widened (differentiably), U32 is an error.
pub(crate) fn float_input(op: &str, t: &Tensor) -> Result<Tensor> {
    match t.dtype() {
        Precision::FP32 => Ok(t.clone()),
        Precision::BF16 => cast(t, Precision::FP32),
        Precision::U32 => bail!(Dtype, "{op}: expects a float tensor, got u32 of shape {:?}", t.shape()),
    }
}

/// Sums `grad` over its leading dims until it has `shape` (the backward of a broadcast).
pub(crate) fn sum_to(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let m = crate::tensor::numel(shape);
    let rows = grad.numel() / m.max(1);
    sum_rows(&grad.view(&[rows, m])?)?.view(shape)
}

pub(crate) use crate::device::gpu::WG;

/// Workgroup grid for `n` elements, `WG` a group.
pub(crate) fn grid_for(n: usize) -> [u32; 3] {
    crate::device::gpu::grid((n as u32).div_ceil(WG))
}
