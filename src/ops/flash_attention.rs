//! FlashAttention: attention tiled with an online softmax, never holding a T×T matrix; the
//! backward recomputes the scores tile by tile from the saved log-sum-exp.

use super::attention::{attention_dims_in, AttnDims};
use super::flash_attention_gpu::{gpu_backward, gpu_forward};
// The registry (`ops::kernels`) names the kernels here.
pub(crate) use super::flash_attention_gpu::{KERNEL_128, KERNEL_64, KERNEL_COOP_128, KERNEL_COOP_64};
use super::{float_input, on_device, permute, slice};
use crate::autograd::record;
use crate::device::cpu;
use crate::{bail, Device, Result, Tensor};
use rayon::prelude::*;

/// CPU tile: queries × keys per block. 128 rather than 64: each tile product is a `gemm` call
/// whose fixed costs 64×64×64 tiles do not cover; the causal diagonal wastes a little more.
const BQ: usize = 128;
const BK: usize = 128;
/// Largest head dim of the GPU kernels (their rows are padded to 64 or 128 columns).
const GPU_MAX_D: usize = 128;

/// Same result as `attention(q, k, v, causal)` (same layout, GQA and mask), in O(T) memory:
/// only the output and the per-row log-sum-exp are kept for the backward. On the GPU the head
/// dim must be at most 128.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Result<Tensor> {
    flash("flash_attention", q, k, v, causal, false)
}

/// `flash_attention` in the layout the projections produce: q [B, Tq, Hq, D], k and v
/// [B, Tk, Hkv, D] -> [B, Tq, Hq, D]. The GPU kernels read and write it as it is, so a model
/// needs no permutes around attention; the CPU permutes to [B, H, T, D] and back, except when
/// decoding one token without gradients (it then reads the KV cache in place).
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
            return on_device(OP, Device::Cpu, || Ok(cpu_bthd_inference(&q, &k, &v, a, causal)), gpu);
        }
        let heads_first = |x: &Tensor| permute(x, &[0, 2, 1, 3]);
        let o = flash_attention(&heads_first(q)?, &heads_first(k)?, &heads_first(v)?, causal)?;
        return heads_first(&o);
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
            on_device(OP, Device::Cpu, || Ok(cpu_bthd_inference(&q, &k, &v, a, true)), || unreachable!("a CPU tensor"))
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
    // (The CPU kernels take [B, H, T, D] only: flash_attention_bthd permutes before it gets here.)
    let (o, lse) =
        on_device(op, q.device(), || Ok(cpu_forward(&q, &k, &v, a, causal)), || gpu_forward(&q, &k, &v, a, causal))?;
    let (sq, sk, sv, so) = (q.clone(), k.clone(), v.clone(), o.clone());
    Ok(record(op, o, &[&q, &k, &v], move |dout| {
        let dout = float_input(op, dout)?;
        let (dq, dk, dv) = on_device(
            "flash_attention_backward",
            dout.device(),
            || Ok(cpu_backward(&sq, &sk, &sv, &so, &dout, &lse, a, causal)),
            || gpu_backward(&sq, &sk, &sv, &so, &dout, &lse, a, causal),
        )?;
        Ok(vec![Some(dq), Some(dk), Some(dv)])
    }))
}

/// Whether query `t` sees key `j` (`j < Tk` is the caller's).
fn kept(a: &AttnDims, causal: bool, t: usize, j: usize) -> bool {
    !causal || j <= t + a.shift()
}

/// Keys that query rows `..t_end` can see.
fn key_end(a: &AttnDims, causal: bool, t_end: usize) -> usize {
    if causal {
        (t_end + a.shift()).min(a.tk)
    } else {
        a.tk
    }
}

/// Splits `buf` ([heads, rows, width]) into blocks of `block` rows:
/// (head index, first row, the block's elements), in order.
fn row_blocks(buf: &mut [f32], rows: usize, width: usize, block: usize) -> Vec<(usize, usize, &mut [f32])> {
    buf.chunks_mut(rows * width)
        .enumerate()
        .flat_map(|(h, head)| head.chunks_mut(block * width).enumerate().map(move |(i, blk)| (h, i * block, blk)))
        .collect()
}

/// dst (m×n, row stride dst_rs) = [dst +] alpha · A·B, where A (m×k) and B (k×n) are given as
/// (slice, row stride, column stride). Bounds are checked here, so the gemm call is sound.
#[allow(clippy::too_many_arguments)]
fn tile_gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    alpha: f32,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!((m - 1) * dst_rs + n <= dst.len(), "tile_gemm: dst out of range");
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len(), "tile_gemm: a out of range");
    assert!((k - 1) * b_rs + (n - 1) * b_cs < b.len(), "tile_gemm: b out of range");
    // SAFETY: every index the strides reach is inside the slices (asserted above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

// q: [B, Hq, Tq, D], k, v: [B, Hkv, Tk, D] -> o: [B, Hq, Tq, D], lse: [B, Hq, Tq]
fn cpu_forward(q: &Tensor, k: &Tensor, v: &Tensor, a: AttnDims, causal: bool) -> (Tensor, Tensor) {
    let (qr, kr, vr) = (q.cpu(), k.cpu(), v.cpu());
    let (qv, kv, vv) = (qr.f32(), kr.f32(), vr.f32());
    let d = a.d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut o = vec![0.0; a.b * a.hq * a.tq * d];
    let mut lse = vec![0.0; a.b * a.hq * a.tq];
    let blocks: Vec<_> = row_blocks(&mut o, a.tq, d, BQ).into_iter().zip(row_blocks(&mut lse, a.tq, 1, BQ)).collect();
    // One task per (batch, head, query block); each owns its rows of O and LSE.
    blocks.into_par_iter().for_each(|((bh, q0, o_blk), (_, _, lse_blk))| {
        let rows = lse_blk.len();
        let q_blk = &qv[(bh * a.tq + q0) * d..(bh * a.tq + q0 + rows) * d];
        let kv0 = kv_head_base(&a, bh);
        let mut s = vec![0.0f32; rows * BK]; // scores, then probabilities
        let mut m = vec![f32::NEG_INFINITY; rows];
        let mut l = vec![0.0f32; rows];
        for k0 in (0..key_end(&a, causal, q0 + rows)).step_by(BK) {
            let cols = BK.min(a.tk - k0);
            let kt = &kv[kv0 + k0 * d..kv0 + (k0 + cols) * d];
            let vt = &vv[kv0 + k0 * d..kv0 + (k0 + cols) * d];
            tile_gemm(rows, cols, d, &mut s, BK, false, (q_blk, d, 1), (kt, 1, d), scale);
            cpu::simd(
                #[inline(always)]
                || {
                    for i in 0..rows {
                        let row = &mut s[i * BK..i * BK + cols];
                        let n = (0..cols).take_while(|&j| kept(&a, causal, q0 + i, k0 + j)).count();
                        let m_new = m[i].max(cpu::max(&row[..n]));
                        row[..n].iter_mut().for_each(|x| *x = cpu::exp(*x - m_new));
                        let sum = cpu::sum(&row[..n]);
                        row[n..].fill(0.0);
                        if n > 0 {
                            // Rescale what was summed under the old max.
                            let alpha = cpu::exp(m[i] - m_new);
                            l[i] = l[i] * alpha + sum;
                            m[i] = m_new;
                            o_blk[i * d..(i + 1) * d].iter_mut().for_each(|x| *x *= alpha);
                        }
                    }
                },
            );
            tile_gemm(rows, d, cols, o_blk, d, true, (&s, BK, 1), (vt, d, 1), 1.0);
        }
        for i in 0..rows {
            o_blk[i * d..(i + 1) * d].iter_mut().for_each(|x| *x /= l[i]);
            lse_blk[i] = m[i] + l[i].ln();
        }
    });
    let shape = [a.b, a.hq, a.tq];
    (Tensor::cpu_f32(o, q.shape()), Tensor::cpu_f32(lse, &shape))
}

/// `flash_attention_bthd` without a backward, on the CPU, for one query per head: one task per
/// query row, its scores over the keys it sees (Tk floats), then softmax and the weighted sum of V.
fn cpu_bthd_inference(q: &Tensor, k: &Tensor, v: &Tensor, a: AttnDims, causal: bool) -> Tensor {
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

/// Element offset of the kv head that query head `bh` (= b·Hq + h) reads.
fn kv_head_base(a: &AttnDims, bh: usize) -> usize {
    let (b, h) = (bh / a.hq, bh % a.hq);
    (b * a.hkv + h / a.group()) * a.tk * a.d
}

/// P = exp(S - lse) and dS = P ∘ (dP - delta) for one tile, in place: `s` holds the scaled
/// scores and becomes P, `dp` holds dO·Vᵀ and becomes dS. Rows are queries t0.., columns keys k0...
#[allow(clippy::too_many_arguments)]
fn tile_grads(
    a: &AttnDims,
    causal: bool,
    (t0, rows, k0, cols): (usize, usize, usize, usize),
    s: &mut [f32],
    dp: &mut [f32],
    lse: &[f32],
    delta: &[f32],
) {
    cpu::simd(
        #[inline(always)]
        || {
            for i in 0..rows {
                // Keys kept for this query are a prefix of the tile's columns.
                let n = (0..cols).take_while(|&j| kept(a, causal, t0 + i, k0 + j)).count();
                let (srow, dprow) = (&mut s[i * BK..i * BK + cols], &mut dp[i * BK..i * BK + cols]);
                for (x, g) in srow[..n].iter_mut().zip(&mut dprow[..n]) {
                    *x = cpu::exp(*x - lse[i]);
                    *g = *x * (*g - delta[i]);
                }
                srow[n..].fill(0.0);
                dprow[n..].fill(0.0);
            }
        },
    )
}

/// dQ, dK, dV from the output O and the saved LSE, in two passes so that no two tasks write the
/// same gradient: dQ by query blocks, dK and dV by key blocks.
#[allow(clippy::too_many_arguments)]
fn cpu_backward(
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
    let d = a.d;
    // delta[row] = Σ dO·O, the rowsum that every dS = P ∘ (dP - delta) needs.
    let delta: Vec<f32> =
        dov.chunks(d).zip(ov.chunks(d)).map(|(x, y)| x.iter().zip(y).map(|(x, y)| x * y).sum()).collect();
    let dev = &delta[..];
    let scale = 1.0 / (d as f32).sqrt();

    // One task per (batch, kv head): it owns that head's dK and dV and the dQ of its group's query
    // heads, so each tile's S and dP are made once for all three (five products a tile; two
    // passes, one for dQ and one for dK and dV, took seven). Key blocks outside, query blocks in:
    // dV[j] += Pᵀ dO, dK[j] += scale · dSᵀ Q, dQ[t] += scale · dS K.
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.numel()], vec![0.0; k.numel()], vec![0.0; v.numel()]);
    let tasks =
        dq.par_chunks_mut(a.group() * a.tq * d).zip(dk.par_chunks_mut(a.tk * d)).zip(dv.par_chunks_mut(a.tk * d));
    tasks.enumerate().for_each(|(bkv, ((dq_g, dk_h), dv_h))| {
        let kv0 = bkv * a.tk * d;
        let (mut s, mut dp) = (vec![0.0f32; BQ * BK], vec![0.0f32; BQ * BK]);
        for k0 in (0..a.tk).step_by(BK) {
            let cols = BK.min(a.tk - k0);
            let kt = &kv[kv0 + k0 * d..kv0 + (k0 + cols) * d];
            let vt = &vv[kv0 + k0 * d..kv0 + (k0 + cols) * d];
            let dk_blk = &mut dk_h[k0 * d..(k0 + cols) * d];
            let dv_blk = &mut dv_h[k0 * d..(k0 + cols) * d];
            // The first query that sees key k0.
            let t_start = if causal { k0.saturating_sub(a.shift()) } else { 0 };
            for g in 0..a.group() {
                // Query head bkv · group + g of the batch: rows r0.. of Q and dO.
                for q0 in (t_start..a.tq).step_by(BQ) {
                    let rows = BQ.min(a.tq - q0);
                    let (r0, qg) = ((bkv * a.group() + g) * a.tq + q0, g * a.tq + q0);
                    let q_blk = &qv[r0 * d..(r0 + rows) * d];
                    let do_blk = &dov[r0 * d..(r0 + rows) * d];
                    tile_gemm(rows, cols, d, &mut s, BK, false, (q_blk, d, 1), (kt, 1, d), scale);
                    tile_gemm(rows, cols, d, &mut dp, BK, false, (do_blk, d, 1), (vt, 1, d), 1.0);
                    let (l, de) = (&lv[r0..r0 + rows], &dev[r0..r0 + rows]);
                    tile_grads(&a, causal, (q0, rows, k0, cols), &mut s, &mut dp, l, de);
                    // Pᵀ and dSᵀ: read the [rows, BK] tiles column-wise.
                    tile_gemm(cols, d, rows, dv_blk, d, true, (&s, 1, BK), (do_blk, d, 1), 1.0);
                    tile_gemm(cols, d, rows, dk_blk, d, true, (&dp, 1, BK), (q_blk, d, 1), scale);
                    let dq_blk = &mut dq_g[qg * d..(qg + rows) * d];
                    tile_gemm(rows, d, cols, dq_blk, d, true, (&dp, BK, 1), (kt, d, 1), scale);
                }
            }
        }
    });
    (Tensor::cpu_f32(dq, q.shape()), Tensor::cpu_f32(dk, k.shape()), Tensor::cpu_f32(dv, v.shape()))
}
