//! FlashAttention: attention tiled with an online softmax, never holding a T×T matrix; the
//! backward recomputes the scores tile by tile from the saved log-sum-exp.

use super::attention::{attention_dims_in, AttnDims};
use super::flash_attention_gpu::{gpu_backward, gpu_forward};
// The registry (`ops::kernels`) names the kernels here.
use super::flash_attention_cpu as cpu;
pub(crate) use super::flash_attention_gpu::{KERNEL_128, KERNEL_64, KERNEL_COOP_128, KERNEL_COOP_64};
use super::{float_input, on_device, slice};
use crate::autograd::record;
use crate::{bail, Device, Result, Tensor};

/// Largest head dim of the GPU kernels (their rows are padded to 64 or 128 columns).
const GPU_MAX_D: usize = 128;

/// Same result as `attention(q, k, v, causal)` (same layout, GQA and mask), in O(T) memory:
/// only the output and the per-row log-sum-exp are kept for the backward. On the GPU the head
/// dim must be at most 128.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    flash("flash_attention", q, k, v, causal, false)
}

/// `flash_attention` in the layout the projections produce: q [B, Tq, Hq, D], k and v
/// [B, Tk, Hkv, D] -> [B, Tq, Hq, D]. The kernels read and write it as it is, so a model needs no
/// permutes around attention.
pub fn flash_attention_bthd(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    const OP: &str = "flash_attention_bthd";
    if q.device() == Device::Cpu {
        let a = attention_dims_in(OP, q, k, v, causal, true)?;
        let tracked = crate::autograd::is_grad_enabled() && [q, k, v].iter().any(|t| t.tracks_grad());
        if a.tq == 1 && !tracked {
            // Decoding one token with a KV cache: read the layout as it is rather than copy the
            // cache (longer inputs are worth the copies for the blocked kernel).
            let (q, k, v) = (float_input(OP, q)?, float_input(OP, k)?, float_input(OP, v)?);
            let gpu = || unreachable!("a CPU tensor");
            return on_device(OP, Device::Cpu, || Ok(cpu::bthd_inference(&q, &k, &v, a, causal)), gpu);
        }
    }
    flash(OP, q, k, v, causal, true)
}

/// Causal attention of q [B, Tq, Hq, D] over the first `len` positions of a KV cache k, v
/// [B, Cap, Hkv, D] (query t sees keys j <= t + len - Tq), reading only those positions: in place
/// for one sequence, and for several when no input tracks gradients (else through a copy of
/// them, which the backward passes through).
pub fn flash_attention_cached(q: &Tensor, k: &Tensor, v: &Tensor, len: usize) -> Result<Tensor> {
    const OP: &str = "flash_attention_cached";
    let full = attention_dims_in(OP, q, k, v, true, true)?;
    if len < full.tq || len > full.tk {
        bail!(Shape, "{OP}: {len} cached positions must cover q {:?} and fit k {:?}", q.shape(), k.shape());
    }
    let (b, hkv, d) = (full.b, full.hkv, full.d);
    if b == 1 {
        // One sequence: its first `len` positions are a contiguous view.
        let prefix = |x: &Tensor| Tensor::from_storage(x.storage().clone(), x.offset(), &[1, len, hkv, d], x.dtype());
        return flash_attention_bthd(q, &prefix(k), &prefix(v), true);
    }
    let tracked = crate::autograd::is_grad_enabled() && [q, k, v].iter().any(|t| t.tracks_grad());
    let a = AttnDims { tk: len, ..full };
    let copied = || flash_attention_bthd(q, &slice(k, 1, 0, len)?, &slice(v, 1, 0, len)?, true);
    let (q, k, v) = (float_input(OP, q)?, float_input(OP, k)?, float_input(OP, v)?);
    match q.device() {
        _ if tracked => copied(),
        Device::Cpu if a.tq == 1 => {
            on_device(OP, Device::Cpu, || Ok(cpu::bthd_inference(&q, &k, &v, a, true)), || unreachable!("a CPU tensor"))
        }
        // A prompt of several sequences on the CPU: the positions it reads, copied once.
        Device::Cpu => copied(),
        Device::Gpu if a.d > GPU_MAX_D => {
            bail!(Shape, "{OP}: the GPU kernel supports head dims up to {GPU_MAX_D}, got q {:?}", q.shape())
        }
        Device::Gpu => {
            on_device(OP, Device::Gpu, || unreachable!("a GPU tensor"), || Ok(gpu_forward(&q, &k, &v, a, true)?.0))
        }
    }
}

fn flash(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, bthd: bool) -> Result<Tensor> {
    let a = attention_dims_in(op, q, k, v, causal, bthd)?;
    let (q, k, v) = (float_input(op, q)?, float_input(op, k)?, float_input(op, v)?);
    if q.device() == Device::Gpu && a.d > GPU_MAX_D {
        bail!(Shape, "{op}: the GPU kernel supports head dims up to {GPU_MAX_D}, got q {:?}", q.shape());
    }
    let (o, lse) =
        on_device(op, q.device(), || Ok(cpu::forward(&q, &k, &v, a, causal)), || gpu_forward(&q, &k, &v, a, causal))?;
    let (sq, sk, sv, so) = (q.clone(), k.clone(), v.clone(), o.clone());
    Ok(record(op, o, &[&q, &k, &v], move |dout| {
        let dout = float_input(op, dout)?;
        let (dq, dk, dv) = on_device(
            "flash_attention_backward",
            dout.device(),
            || Ok(cpu::backward(&sq, &sk, &sv, &so, &dout, &lse, a, causal)),
            || gpu_backward(&sq, &sk, &sv, &so, &dout, &lse, a, causal),
        )?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    }))
}
