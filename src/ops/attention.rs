//! Scaled dot-product attention, materialised: softmax(Q·Kᵀ/√D + mask)·V from basic ops.
//! The reference for `flash_attention`; autograd gives its backward.

use super::softmax::{softmax_masked, Mask};
use super::{matmul, matmul_t, same_device, scale};
use crate::{bail, Result, Tensor};

/// Sizes of an attention call: q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D], or with `bthd`
/// q [B, Tq, Hq, D], k and v [B, Tk, Hkv, D].
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnDims {
    pub b: usize,
    pub hq: usize,
    pub hkv: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub bthd: bool,
    /// Positions between two batches of k and v: tk, or a KV cache's capacity when reading its
    /// first tk positions.
    pub tk_cap: usize,
}

impl AttnDims {
    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.hq / self.hkv
    }

    /// With a causal mask, query t sees keys j <= t + shift (aligned at the end, as with a KV cache).
    pub fn shift(&self) -> usize {
        self.tk - self.tq
    }
}

/// Checks the shapes (and devices) of q, k, v; errors name `op` and the shapes.
pub(crate) fn attention_dims(op: &str, q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<AttnDims> {
    attention_dims_in(op, q, k, v, causal, false)
}

/// `attention_dims` for q, k, v in [B, H, T, D] or, with `bthd`, [B, T, H, D].
pub(crate) fn attention_dims_in(
    op: &str,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    causal: bool,
    bthd: bool,
) -> Result<AttnDims> {
    same_device(op, &[q, k, v])?;
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    let (&[b, q1, q2, d], &[kb, k1, k2, kd]) = (qs, ks) else {
        let want = if bthd { "[B, T, Hq, D] and k, v [B, T, Hkv, D]" } else { "[B, Hq, T, D] and k, v [B, Hkv, T, D]" };
        bail!(Shape, "{op}: q must be {want}, got q {qs:?}, k {ks:?}");
    };
    let ((hq, tq), (hkv, tk)) = if bthd { ((q2, q1), (k2, k1)) } else { ((q1, q2), (k1, k2)) };
    if kb != b || kd != d || vs != ks {
        bail!(Shape, "{op}: q {qs:?}, k {ks:?} and v {vs:?} must agree in batch and head dim, and k and v in shape");
    }
    if hkv == 0 || hq % hkv != 0 {
        bail!(Shape, "{op}: query heads ({hq}) must be a multiple of kv heads ({hkv}); q {qs:?}, k {ks:?}");
    }
    if b * hq * tq * tk * d == 0 {
        bail!(Shape, "{op}: empty input, q {qs:?}, k {ks:?}");
    }
    if causal && tq > tk {
        bail!(Shape, "{op}: a causal mask needs no more queries than keys, got q {qs:?}, k {ks:?}");
    }
    Ok(AttnDims { b, hq, hkv, tq, tk, d, bthd, tk_cap: tk })
}

/// softmax(Q·Kᵀ/√D + mask)·V with q [B, Hq, T, D], k and v [B, Hkv, T, D] -> [B, Hq, T, D].
/// Query head h reads kv head h / (Hq/Hkv) (grouped-query attention). With `causal`, query t
/// attends keys j <= t (+ Tk - Tq when k is longer than q). Memory grows with T².
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    let a = attention_dims("attention", q, k, v, causal)?;
    let g = a.group();
    // The G query heads that share a kv head are adjacent in q, so q is viewed (no copy) as
    // [B·Hkv, G·Tq, D] and each kv head is used by one batched matmul with no repeat.
    let qg = q.view(&[a.b * a.hkv, g * a.tq, a.d])?;
    let kg = k.view(&[a.b * a.hkv, a.tk, a.d])?;
    let vg = v.view(&[a.b * a.hkv, a.tk, a.d])?;
    let qg = scale(&qg, 1.0 / (a.d as f32).sqrt())?;
    let s = matmul_t(&qg, &kg, false, true)?; // [B·Hkv, G·Tq, Tk]
    let mask = if causal {
        // Row r of s is query r % Tq.
        Mask::Causal { tq: a.tq, shift: a.shift() }
    } else {
        Mask::None
    };
    let p = softmax_masked(&s, mask)?;
    matmul(&p, &vg)?.view(&[a.b, a.hq, a.tq, a.d]) // [B·Hkv, G·Tq, D] -> [B, Hq, Tq, D]
}
