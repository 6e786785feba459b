//! FlashAttention on the GPU: the kernels, their parameters and the dispatches.

use super::attention::AttnDims;
use super::{matmul_precision, MatmulPrecision};
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::device::Storage;
use crate::{bail, Precision, Result, Tensor};
use std::sync::Arc;

/// The kernels with rows padded to 64 and to 128 columns (the WGSL's DH).
pub(crate) static KERNEL_64: Kernel = Kernel {
    name: "flash_attention_64",
    source: concat!(
        "const DH: u32 = 64u;\n",
        include_str!("flash_attention_common.wgsl"),
        include_str!("flash_attention.wgsl")
    ),
    params: &FlashParams::LAYOUT,
    codes: &[],
};
pub(crate) static KERNEL_128: Kernel = Kernel {
    name: "flash_attention_128",
    source: concat!(
        "const DH: u32 = 128u;\n",
        include_str!("flash_attention_common.wgsl"),
        include_str!("flash_attention.wgsl")
    ),
    params: &FlashParams::LAYOUT,
    codes: &[],
};

/// The cooperative-matrix kernels (f16 products on tensor cores, see `MatmulPrecision::F16`), for
/// head dims up to 64 and up to 128 with 4-aligned rows.
pub(crate) static KERNEL_COOP_64: Kernel = Kernel {
    name: "flash_attention_coop",
    source: concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        "const DH: u32 = 64u;\nconst NB: u32 = 4u;\nalias FV = vec4<f32>;\n",
        include_str!("flash_attention_common.wgsl"),
        include_str!("flash_attention_coop.wgsl")
    ),
    params: &FlashParams::LAYOUT,
    codes: &[],
};
pub(crate) static KERNEL_COOP_128: Kernel = Kernel {
    name: "flash_attention_coop_128",
    source: concat!(
        "enable f16;\nenable wgpu_cooperative_matrix;\n",
        "const DH: u32 = 128u;\nconst NB: u32 = 8u;\nalias FV = vec4<f16>;\n",
        include_str!("flash_attention_common.wgsl"),
        include_str!("flash_attention_coop.wgsl")
    ),
    params: &FlashParams::LAYOUT,
    codes: &[],
};

/// Bytes of workgroup storage the cooperative kernel at head dim 128 needs (its dK/dV entry).
const COOP_128_STORAGE: u32 = 30976;

/// Rows a GPU workgroup owns (queries; keys for dK/dV; BR in the WGSL).
const GPU_ROWS: usize = 64;

kernel_params! {
    /// The Params of flash_attention_common.wgsl, which every FlashAttention kernel shares: sizes,
    /// element offsets of q, k, v, dO, LSE, aux, where the second output starts in `out`, and
    /// the head and position strides of q-shaped and kv-shaped tensors, and the batch stride of k, v.
    pub(crate) struct FlashParams {
        b: u32,
        hq: u32,
        hkv: u32,
        tq: u32,
        tk: u32,
        d: u32,
        causal: u32,
        shift: u32,
        scale: f32,
        q_off: u32,
        k_off: u32,
        v_off: u32,
        do_off: u32,
        lse_off: u32,
        aux_off: u32,
        out2: u32,
        q_hs: u32,
        q_rs: u32,
        kv_hs: u32,
        kv_rs: u32,
        kv_bs: u32,
    }
}

/// The params for `a`; `offs` are the element offsets q, k, v, dO, LSE, aux (binding order: aux
/// before LSE) and out2.
fn params(a: &AttnDims, causal: bool, offs: [usize; 7]) -> Result<FlashParams> {
    let u = |what, v| to_u32("flash_attention", what, v);
    let [q_off, k_off, v_off, do_off, lse_off, aux_off, out2] = offs;
    let ((q_hs, q_rs), (kv_hs, kv_rs)) = match a.bthd {
        true => ((a.d, a.hq * a.d), (a.d, a.hkv * a.d)),
        false => ((a.tq * a.d, a.d), (a.tk * a.d, a.d)),
    };
    Ok(FlashParams {
        b: u("batch", a.b)?,
        hq: u("query heads", a.hq)?,
        hkv: u("kv heads", a.hkv)?,
        tq: u("query length", a.tq)?,
        tk: u("key length", a.tk)?,
        d: u("head dim", a.d)?,
        causal: causal as u32,
        shift: u("tk - tq", a.shift())?,
        scale: 1.0 / (a.d as f32).sqrt(),
        q_off: u("q offset", q_off)?,
        k_off: u("k offset", k_off)?,
        v_off: u("v offset", v_off)?,
        do_off: u("dO offset", do_off)?,
        lse_off: u("LSE offset", lse_off)?,
        aux_off: u("aux offset", aux_off)?,
        out2: u("second output offset", out2)?,
        q_hs: u("q head stride", q_hs)?,
        q_rs: u("q row stride", q_rs)?,
        kv_hs: u("kv head stride", kv_hs)?,
        kv_rs: u("kv row stride", kv_rs)?,
        kv_bs: u("kv batch stride", a.hkv * a.tk_cap * a.d)?,
    })
}

/// The kernel for these dims: a cooperative-matrix one when matmuls are f16 (which implies the
/// GPU has the matrices), it can read every input (at element `offsets`) as vec4s and, at head dims
/// over 64, the GPU has the workgroup storage; else the FP32 one for the head dim.
fn gpu_kernel(a: &AttnDims, offsets: &[usize], storage: u32) -> &'static Kernel {
    let coop = matmul_precision() == MatmulPrecision::F16
        && a.d.is_multiple_of(4)
        && offsets.iter().all(|o| o.is_multiple_of(4));
    if coop && a.d <= 64 {
        &KERNEL_COOP_64
    } else if coop && a.d <= 128 && storage >= COOP_128_STORAGE {
        &KERNEL_COOP_128
    } else if a.d <= 64 {
        &KERNEL_64
    } else {
        &KERNEL_128
    }
}

fn check_grid(groups: [u32; 3]) -> Result<()> {
    if groups.iter().any(|&g| g > 65535) {
        bail!(Shape, "flash_attention: workgroup grid {groups:?} exceeds the GPU's 65535 per dim");
    }
    Ok(())
}

// Each entry writes one buffer, so two outputs share it: O then LSE in the forward, dQ then
// delta in the first backward kernel, dK then dV in the second.
pub(super) fn gpu_forward(q: &Tensor, k: &Tensor, v: &Tensor, a: AttnDims, causal: bool) -> Result<(Tensor, Tensor)> {
    let ctx = gpu::context()?;
    let rows = a.b * a.hq * a.tq;
    let out = ctx.alloc((rows * a.d + rows) as u64 * 4);
    let offs = [q.offset(), k.offset(), v.offset(), 0, 0, 0, rows * a.d];
    let groups = [a.tq.div_ceil(GPU_ROWS) as u32, a.hq as u32, a.b as u32];
    check_grid(groups)?;
    // The forward reads no dO or aux, but its loads share one switch with the backward's, so q
    // stands in.
    let bufs = [q.gpu(), k.gpu(), v.gpu(), &out, q.gpu(), q.gpu()];
    let kernel = gpu_kernel(&a, &[q.offset(), k.offset(), v.offset()], ctx.limits.max_compute_workgroup_storage_size);
    ctx.dispatch(kernel, "forward", &params(&a, causal, offs)?, &bufs, groups)?;
    let out = Storage::Gpu(Arc::new(out));
    Ok((
        Tensor::from_storage(out.clone(), 0, q.shape(), Precision::FP32),
        Tensor::from_storage(out, rows * a.d, &[a.b, a.hq, a.tq], Precision::FP32),
    ))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn gpu_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    a: AttnDims,
    causal: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let ctx = gpu::context()?;
    let (nq, nk) = (q.numel(), k.numel());
    let (dq, dkv) = (ctx.alloc((nq + a.b * a.hq * a.tq) as u64 * 4), ctx.alloc(2 * nk as u64 * 4));
    let offs = |aux_off, out2| [q.offset(), k.offset(), v.offset(), dout.offset(), lse.offset(), aux_off, out2];
    let groups = [a.tq.div_ceil(GPU_ROWS) as u32, a.hq as u32, a.b as u32];
    check_grid(groups)?;
    let bufs = [q.gpu(), k.gpu(), v.gpu(), &dq, dout.gpu(), o.gpu(), lse.gpu()];
    let offsets = [q.offset(), k.offset(), v.offset(), dout.offset(), o.offset()];
    let kernel = gpu_kernel(&a, &offsets, ctx.limits.max_compute_workgroup_storage_size);
    ctx.dispatch(kernel, "backward_dq", &params(&a, causal, offs(o.offset(), nq))?, &bufs, groups)?;
    // dK and dV read delta from after dQ.
    let groups = [a.tk.div_ceil(GPU_ROWS) as u32, a.hkv as u32, a.b as u32];
    check_grid(groups)?;
    let bufs = [q.gpu(), k.gpu(), v.gpu(), &dkv, dout.gpu(), &dq, lse.gpu()];
    ctx.dispatch(kernel, "backward_dkdv", &params(&a, causal, offs(nq, nk))?, &bufs, groups)?;
    let dkv = Storage::Gpu(Arc::new(dkv));
    Ok((
        Tensor::from_storage(Storage::Gpu(Arc::new(dq)), 0, q.shape(), Precision::FP32),
        Tensor::from_storage(dkv.clone(), 0, k.shape(), Precision::FP32),
        Tensor::from_storage(dkv, nk, v.shape(), Precision::FP32),
    ))
}
