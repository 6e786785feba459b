//! FlashAttention's CPU kernels: blocks of queries against blocks of keys, each product through
//! the matmul's register tiles on the task's own thread (`matmul_cpu::packed`). Rows are read and
//! written in place in either layout, [B, H, T, D] or [B, T, H, D] (the projections' layout, so
//! the model needs no permutes around attention).

use super::attention::AttnDims;
use super::matmul_cpu::{self, Product, Ptr};
use super::matmul_tiles;
use crate::device::cpu;
use crate::Tensor;
use rayon::prelude::*;

/// Queries × keys per block: 64 skips more of the causal mask's upper triangle than 128, and
/// the register tiles keep small products efficient.
const BQ: usize = 64;
const BK: usize = 64;

/// Where one tensor's rows lie: `heads` heads of `len` positions of `d` values, in [B, H, T, D]
/// or, with `bthd`, [B, T, H, D].
#[derive(Clone, Copy)]
struct Rows {
    heads: usize,
    len: usize,
    d: usize,
    bthd: bool,
}

impl Rows {
    /// Element offset of position t of head h in batch b.
    fn at(&self, b: usize, h: usize, t: usize) -> usize {
        match self.bthd {
            true => ((b * self.len + t) * self.heads + h) * self.d,
            false => ((b * self.heads + h) * self.len + t) * self.d,
        }
    }

    /// Elements between positions t and t + 1.
    fn stride(&self) -> usize {
        if self.bthd {
            self.heads * self.d
        } else {
            self.d
        }
    }
}

fn layouts(a: &AttnDims) -> (Rows, Rows) {
    // The outputs are written row by row without being zeroed first: k and v must hold exactly
    // the Tk positions the tasks write (a KV cache's spare capacity would stay unwritten).
    assert_eq!(a.tk_cap, a.tk, "flash attention on the CPU reads whole k and v");
    let q = Rows { heads: a.hq, len: a.tq, d: a.d, bthd: a.bthd };
    (q, Rows { heads: a.hkv, len: a.tk_cap, ..q })
}

/// How many of the `cols` keys from k0 on query `t` sees: they are a prefix.
fn kept(a: &AttnDims, causal: bool, t: usize, k0: usize, cols: usize) -> usize {
    match causal {
        true => (t + a.shift() + 1).saturating_sub(k0).min(cols),
        false => cols,
    }
}

/// Keys that query rows `..t_end` can see.
pub(super) fn key_end(a: &AttnDims, causal: bool, t_end: usize) -> usize {
    if causal {
        (t_end + a.shift()).min(a.tk)
    } else {
        a.tk
    }
}

/// C (m×n, rows `c_rs` apart) (+)= A·B on this thread, where A's element (i, p) is
/// `a[i·a_rs + p·a_cs]` and B's (p, j) is `b[p·b_rs + j·b_cs]`.
///
/// # Safety
/// Every element named lies inside `a`, `b` and C.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    c: *mut f32,
    c_rs: usize,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) {
    if m * n * k == 0 {
        return;
    }
    debug_assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len() && (k - 1) * b_rs + (n - 1) * b_cs < b.len());
    let p = Product { m, n, k, a_cs, a_rs, b_cs, b_rs, c_rs };
    matmul_cpu::packed(c, a, b, p, accumulate, false, matmul_tiles::best());
}

/// An output of `len` floats that tasks write through `ptr()`, each element once and never
/// read first, so it is not zeroed.
struct Out(Vec<f32>, usize);

impl Out {
    fn new(len: usize) -> Out {
        Out(Vec::with_capacity(len), len)
    }

    fn ptr(&mut self) -> Ptr<*mut f32> {
        Ptr(self.0.as_mut_ptr())
    }

    /// # Safety
    /// Every element has been written.
    unsafe fn done(mut self) -> Vec<f32> {
        self.0.set_len(self.1);
        self.0
    }
}

/// q [B, Hq, Tq, D] (or [B, Tq, Hq, D] with `a.bthd`), k and v likewise with Hkv and Tk
/// -> (o shaped like q, lse [B, Hq, Tq]).
pub(super) fn forward(q: &Tensor, k: &Tensor, v: &Tensor, a: AttnDims, causal: bool) -> (Tensor, Tensor) {
    let (qr, kr, vr) = (q.cpu(), k.cpu(), v.cpu());
    let (qv, kv, vv) = (qr.f32(), kr.f32(), vr.f32());
    let ((ql, kl), d) = (layouts(&a), a.d);
    let scale = 1.0 / (d as f32).sqrt();
    let blocks = a.tq.div_ceil(BQ);
    let (mut o, mut lse) = (Out::new(q.numel()), Out::new(a.b * a.hq * a.tq));
    let (o_out, lse_out) = (o.ptr(), lse.ptr());
    // One task per (batch, head, query block); each writes its own rows of O and LSE.
    (0..a.b * a.hq * blocks).into_par_iter().for_each(|task| {
        let (bh, q0) = (task / blocks, task % blocks * BQ);
        let (b, h, rows) = (bh / a.hq, bh % a.hq, BQ.min(a.tq - q0));
        let kv0 = kl.at(b, h / a.group(), 0);
        // The block's queries, scaled, in a block of their own; O summed here too.
        let mut qs = vec![0.0f32; rows * d];
        for (i, row) in qs.chunks_exact_mut(d).enumerate() {
            row.iter_mut().zip(&qv[ql.at(b, h, q0 + i)..]).for_each(|(x, &y)| *x = y * scale);
        }
        let (mut s, mut ob) = (vec![0.0f32; rows * BK], vec![0.0f32; rows * d]);
        let (mut m, mut l) = (vec![f32::NEG_INFINITY; rows], vec![0.0f32; rows]);
        for k0 in (0..key_end(&a, causal, q0 + rows)).step_by(BK) {
            let cols = BK.min(a.tk - k0);
            let (kt, vt) = (&kv[kv0 + k0 * kl.stride()..], &vv[kv0 + k0 * kl.stride()..]);
            // SAFETY (both products): the blocks lie inside q, k, v and the scratch.
            unsafe { product(s.as_mut_ptr(), BK, (&qs, d, 1), (kt, 1, kl.stride()), (rows, cols, d), false) };
            cpu::simd(
                #[inline(always)]
                || {
                    for i in 0..rows {
                        let row = &mut s[i * BK..i * BK + cols];
                        let n = kept(&a, causal, q0 + i, k0, cols);
                        let m_new = m[i].max(cpu::max(&row[..n]));
                        row[..n].iter_mut().for_each(|x| *x = cpu::exp(*x - m_new));
                        let sum = cpu::sum(&row[..n]);
                        row[n..].fill(0.0);
                        if n > 0 {
                            // Rescale what was summed under the old max.
                            let alpha = cpu::exp(m[i] - m_new);
                            l[i] = l[i] * alpha + sum;
                            m[i] = m_new;
                            ob[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= alpha);
                        }
                    }
                },
            );
            unsafe { product(ob.as_mut_ptr(), d, (&s, BK, 1), (vt, kl.stride(), 1), (rows, d, cols), true) };
        }
        for i in 0..rows {
            // SAFETY: row (b, h, q0 + i) of O and of LSE belong to this task alone.
            unsafe {
                let out = o_out.get().add(ql.at(b, h, q0 + i));
                ob[i * d..(i + 1) * d].iter().enumerate().for_each(|(c, &x)| *out.add(c) = x / l[i]);
                *lse_out.get().add(bh * a.tq + q0 + i) = m[i] + l[i].ln();
            }
        }
    });
    // SAFETY: the tasks covered every (batch, head, query) row of both.
    let (o, lse) = unsafe { (o.done(), lse.done()) };
    (Tensor::cpu_f32(o, q.shape()), Tensor::cpu_f32(lse, &[a.b, a.hq, a.tq]))
}

/// P = exp(S - lse) and dS = scale · P ∘ (dP - delta) for one tile, in place: `s` holds the
/// scaled scores and becomes P, `dp` holds dO·Vᵀ and becomes dS. Rows are queries t0.., columns
/// keys k0...
#[allow(clippy::too_many_arguments)]
fn tile_grads(
    a: &AttnDims,
    causal: bool,
    (t0, rows, k0, cols): (usize, usize, usize, usize),
    s: &mut [f32],
    dp: &mut [f32],
    lse: &[f32],
    delta: &[f32],
    scale: f32,
) {
    cpu::simd(
        #[inline(always)]
        || {
            for i in 0..rows {
                let n = kept(a, causal, t0 + i, k0, cols);
                let (srow, dprow) = (&mut s[i * BK..i * BK + cols], &mut dp[i * BK..i * BK + cols]);
                for (x, g) in srow[..n].iter_mut().zip(&mut dprow[..n]) {
                    *x = cpu::exp(*x - lse[i]);
                    *g = *x * (*g - delta[i]) * scale;
                }
                srow[n..].fill(0.0);
                dprow[n..].fill(0.0);
            }
        },
    )
}

/// dQ, dK, dV (each shaped like its input) from the output O and the saved LSE.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
    a: AttnDims,
    causal: bool,
) -> (Tensor, Tensor, Tensor) {
    let (qr, kr, vr, or, dor, lr) = (q.cpu(), k.cpu(), v.cpu(), o.cpu(), dout.cpu(), lse.cpu());
    let (qv, kv, vv, ov, dov, lv) = (qr.f32(), kr.f32(), vr.f32(), or.f32(), dor.f32(), lr.f32());
    let ((ql, kl), d, g) = (layouts(&a), a.d, a.group());
    let scale = 1.0 / (d as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (Out::new(q.numel()), Out::new(k.numel()), Out::new(v.numel()));
    let (dq_out, dk_out, dv_out) = (dq.ptr(), dk.ptr(), dv.ptr());
    // One task per (batch, kv head): it owns that head's dK and dV and the dQ of its group's
    // query heads, so each tile's S and dP are made once for all three (five products a tile).
    // Key blocks outside, query blocks in: dV[j] += Pᵀ dO, dK[j] += dSᵀ Q, dQ[t] += dS K.
    (0..a.b * a.hkv).into_par_iter().for_each(|bkv| {
        let (b, hk) = (bkv / a.hkv, bkv % a.hkv);
        let kv0 = kl.at(b, hk, 0);
        let heads = || (0..g).map(|gi| hk * g + gi);
        // The group's queries scaled, delta = Σ dO·O of each of their rows, and LSE.
        let mut qs = vec![0.0f32; g * a.tq * d];
        let mut delta = vec![0.0f32; g * a.tq];
        for (gi, h) in heads().enumerate() {
            for t in 0..a.tq {
                let (r, at) = (gi * a.tq + t, ql.at(b, h, t));
                let (qrow, orow, dorow) = (&qv[at..at + d], &ov[at..at + d], &dov[at..at + d]);
                qs[r * d..(r + 1) * d].iter_mut().zip(qrow).for_each(|(x, &y)| *x = y * scale);
                delta[r] = orow.iter().zip(dorow).map(|(x, y)| x * y).sum();
            }
        }
        let lse0 = (b * a.hq + hk * g) * a.tq;
        let (mut dqb, mut dkb, mut dvb) = (vec![0.0f32; g * a.tq * d], vec![0.0f32; a.tk * d], vec![0.0f32; a.tk * d]);
        let (mut s, mut dp) = (vec![0.0f32; BQ * BK], vec![0.0f32; BQ * BK]);
        for k0 in (0..a.tk).step_by(BK) {
            let cols = BK.min(a.tk - k0);
            let (kt, vt) = (&kv[kv0 + k0 * kl.stride()..], &vv[kv0 + k0 * kl.stride()..]);
            // The first query that sees key k0.
            let t_start = if causal { k0.saturating_sub(a.shift()) } else { 0 };
            for (gi, h) in heads().enumerate() {
                for q0 in (t_start..a.tq).step_by(BQ) {
                    let (rows, r0) = (BQ.min(a.tq - q0), gi * a.tq + q0);
                    let (qt, dot) = (&qv[ql.at(b, h, q0)..], &dov[ql.at(b, h, q0)..]);
                    let (qst, qstride) = (&qs[r0 * d..], ql.stride());
                    // SAFETY (all five): the blocks lie inside the inputs and the scratch.
                    unsafe {
                        product(s.as_mut_ptr(), BK, (qst, d, 1), (kt, 1, kl.stride()), (rows, cols, d), false);
                        product(dp.as_mut_ptr(), BK, (dot, qstride, 1), (vt, 1, kl.stride()), (rows, cols, d), false);
                    }
                    let (l, de) = (&lv[lse0 + r0..lse0 + r0 + rows], &delta[r0..r0 + rows]);
                    tile_grads(&a, causal, (q0, rows, k0, cols), &mut s, &mut dp, l, de, scale);
                    // Pᵀ and dSᵀ: the [rows, BK] tiles read column-wise.
                    unsafe {
                        let (dvt, dkt) = (dvb.as_mut_ptr().add(k0 * d), dkb.as_mut_ptr().add(k0 * d));
                        product(dvt, d, (&s, 1, BK), (dot, qstride, 1), (cols, d, rows), true);
                        product(dkt, d, (&dp, 1, BK), (qt, qstride, 1), (cols, d, rows), true);
                        let dqt = dqb.as_mut_ptr().add(r0 * d);
                        product(dqt, d, (&dp, BK, 1), (kt, kl.stride(), 1), (rows, d, cols), true);
                    }
                }
            }
        }
        // SAFETY: these rows of dQ, dK and dV belong to this task alone.
        unsafe {
            for t in 0..a.tk {
                let at = kv0 + t * kl.stride();
                std::ptr::copy_nonoverlapping(dkb[t * d..].as_ptr(), dk_out.get().add(at), d);
                std::ptr::copy_nonoverlapping(dvb[t * d..].as_ptr(), dv_out.get().add(at), d);
            }
            for (gi, h) in heads().enumerate() {
                for t in 0..a.tq {
                    let src = dqb[(gi * a.tq + t) * d..].as_ptr();
                    std::ptr::copy_nonoverlapping(src, dq_out.get().add(ql.at(b, h, t)), d);
                }
            }
        }
    });
    // SAFETY: the tasks covered every row of the three: each kv head once, each query head in
    // its group.
    let (dq, dk, dv) = unsafe { (dq.done(), dk.done(), dv.done()) };
    (Tensor::cpu_f32(dq, q.shape()), Tensor::cpu_f32(dk, k.shape()), Tensor::cpu_f32(dv, v.shape()))
}

/// `flash_attention_bthd` without a backward, for one query per head: one task per query row,
/// its scores over the keys it sees (Tk floats), then softmax and the weighted sum of V.
pub(super) fn bthd_inference(q: &Tensor, k: &Tensor, v: &Tensor, a: AttnDims, causal: bool) -> Tensor {
    let (qr, kr, vr) = (q.cpu(), k.cpu(), v.cpu());
    let (qv, kv, vv) = (qr.f32(), kr.f32(), vr.f32());
    let d = a.d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut o = vec![0.0; q.numel()];
    // Row i of o (and q) is (b, t, h) = (i / (Tq·Hq), i / Hq % Tq, i % Hq).
    o.par_chunks_mut(d).enumerate().for_each(|(i, out)| {
        let (b, t, h) = (i / (a.tq * a.hq), i / a.hq % a.tq, i % a.hq);
        let key_row = |j: usize| ((b * a.tk_cap + j) * a.hkv + h / a.group()) * d;
        let qrow = &qv[i * d..(i + 1) * d];
        let mut s: Vec<f32> = (0..key_end(&a, causal, t + 1))
            .map(|j| qrow.iter().zip(&kv[key_row(j)..key_row(j) + d]).map(|(x, y)| x * y).sum::<f32>() * scale)
            .collect();
        let m = cpu::max(&s);
        s.iter_mut().for_each(|x| *x = cpu::exp(*x - m));
        let sum = cpu::sum(&s);
        for (j, p) in s.iter().enumerate() {
            let w = p / sum;
            out.iter_mut().zip(&vv[key_row(j)..key_row(j) + d]).for_each(|(o, x)| *o += w * x);
        }
    });
    Tensor::cpu_f32(o, q.shape())
}
