//! Batched matrix multiply with transpose flags: CPU through `gemm`, GPU through register-blocked
//! WGSL SGEMMs (matmul.wgsl, matmul_wide.wgsl), or (opt-in) f16 cooperative matrices.

use super::{float_input, matmul_cpu, on_device, same_device, sum_to};
use crate::autograd::record;
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;
use std::sync::atomic::{AtomicU8, Ordering};

pub(crate) static KERNEL: Kernel = Kernel {
    name: "matmul",
    source: concat!(include_str!("matmul_common.wgsl"), include_str!("matmul.wgsl")),
    params: &MatmulParams::LAYOUT,
    codes: &[],
};
pub(crate) static WIDE_KERNEL: Kernel = Kernel {
    name: "matmul_wide",
    source: concat!(include_str!("matmul_common.wgsl"), include_str!("matmul_wide.wgsl")),
    params: &MatmulParams::LAYOUT,
    codes: &[],
};
pub(crate) static COOP_KERNEL: Kernel =
    Kernel { name: "matmul_coop", source: include_str!("matmul_coop.wgsl"), params: &MatmulParams::LAYOUT, codes: &[] };

kernel_params! {
    /// The Params of matmul_common.wgsl and matmul_coop.wgsl (the SGEMMs ignore ta and tb:
    /// their entry point is the transpose).
    pub(crate) struct MatmulParams {
        m: u32,
        n: u32,
        k: u32,
        a_off: u32,
        b_off: u32,
        a_bs: u32,
        b_bs: u32,
        ta: u32,
        tb: u32,
        aligned: u32,
        splits: u32,
        ks: u32,
        c_off: u32,
        acc: u32,
    }
}

/// Output tile of one workgroup, (rows, columns): the SGEMM's, the wide SGEMM's and the
/// cooperative kernel's.
const TILE: (usize, usize) = (128, 128);
const WIDE_TILE: (usize, usize) = (128, 256);
const COOP_TILE: (usize, usize) = (128, 128);

/// How GPU matmuls multiply (the CPU always uses f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// f32 inputs and accumulation: the default and the reference.
    FP32,
    /// Inputs rounded to f16 (11 significant bits, range ±65504), products accumulated in f32, on
    /// cooperative matrices (tensor cores). FlashAttention's products go the same way where the
    /// head dim is at most 128 (q, k, v, dO and the probabilities in f16; sums and outputs f32).
    /// Values and gradients outside f16's range overflow or flush to zero, so scale them first.
    /// Needs an adapter with `EXPERIMENTAL_COOPERATIVE_MATRIX` (16×16 f16), `SHADER_F16` and
    /// subgroups of 32, e.g. NVIDIA through Vulkan.
    F16,
}

/// 1: FP32 (the default), 2: F16, 3: F16 asked for by `crate::configure`, checked against the
/// adapter on first use (so a CPU run never starts the GPU for it).
static PRECISION: AtomicU8 = AtomicU8::new(1);
const FP32: u8 = 1;
const F16: u8 = 2;
const F16_IF_SUPPORTED: u8 = 3;

/// Whether the GPU can run `MatmulPrecision::F16` (false without a GPU).
pub fn coop_matmul_supported() -> bool {
    gpu::context().is_ok_and(|ctx| ctx.coop_matmul)
}

/// Chooses how GPU matmuls multiply; `F16` is an error where the GPU cannot run it.
/// `IRONTENSOR_MATMUL=coop` asks for `F16` through `Settings` and `crate::configure` instead.
pub fn set_matmul_precision(precision: MatmulPrecision) -> Result<()> {
    if precision == MatmulPrecision::F16 && !coop_matmul_supported() {
        bail!(Device, "set_matmul_precision: this GPU has no 16×16 f16 cooperative matrices (or no GPU); use FP32");
    }
    PRECISION.store(if precision == MatmulPrecision::F16 { F16 } else { FP32 }, Ordering::Relaxed);
    Ok(())
}

/// `F16` where the adapter has it, decided at the first matmul (`IRONTENSOR_MATMUL=coop`).
pub(crate) fn prefer_f16_matmul() {
    PRECISION.store(F16_IF_SUPPORTED, Ordering::Relaxed);
}

/// How GPU matmuls multiply now.
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        F16 => MatmulPrecision::F16,
        F16_IF_SUPPORTED => {
            let f16 = coop_matmul_supported();
            if !f16 {
                eprintln!("IRONTENSOR_MATMUL=coop: this GPU has no 16×16 f16 cooperative matrices; matmuls stay FP32");
            }
            let want = if f16 { F16 } else { FP32 };
            let _ = PRECISION.compare_exchange(F16_IF_SUPPORTED, want, Ordering::Relaxed, Ordering::Relaxed);
            matmul_precision()
        }
        _ => MatmulPrecision::FP32,
    }
}

/// a: [.., M, K] · b: [.., K, N] -> [.., M, N]. Batch dims must match, or one side is 2-D
/// and is shared across the other's batch (like a weight).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_t(a, b, false, false)
}

struct Dims {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    a_bs: usize,
    b_bs: usize,
    out_shape: Vec<usize>,
}

fn dims(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<Dims> {
    let err = || {
        let f = |t: bool| if t { "ᵀ" } else { "" };
        Err(crate::Error::Shape(format!("matmul: cannot multiply {a:?}{} by {b:?}{}", f(ta), f(tb))))
    };
    if a.len() < 2 || b.len() < 2 {
        return err();
    }
    let (ra, rb) = (a.len(), b.len());
    let (m, ka) = if ta { (a[ra - 1], a[ra - 2]) } else { (a[ra - 2], a[ra - 1]) };
    let (kb, n) = if tb { (b[rb - 1], b[rb - 2]) } else { (b[rb - 2], b[rb - 1]) };
    let (ba, bb) = (&a[..ra - 2], &b[..rb - 2]);
    if ka != kb || !(ba == bb || ba.is_empty() || bb.is_empty()) {
        return err();
    }
    let batch_dims = if ba.len() >= bb.len() { ba } else { bb };
    let batch: usize = batch_dims.iter().product();
    let mut out_shape = batch_dims.to_vec();
    out_shape.extend([m, n]);
    let a_bs = if ba.is_empty() { 0 } else { m * ka };
    let b_bs = if bb.is_empty() { 0 } else { ka * n };
    Ok(Dims { m, n, k: ka, batch, a_bs, b_bs, out_shape })
}

/// op(a) · op(b), where op transposes the last two dims when its flag is set.
pub fn matmul_t(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    // The operands as given: what the backward keeps of a BF16 weight is the weight itself, not
    // an f32 copy (a 1B model's BF16 weights would otherwise be held again as 4.9 GB of f32).
    let (given_a, given_b) = (a.clone(), b.clone());
    let (a, b) = (float_input("matmul", a)?, float_input("matmul", b)?);
    let device = same_device("matmul", &[&a, &b])?;
    let d = dims(a.shape(), b.shape(), ta, tb)?;
    let out =
        on_device("matmul", device, || Ok(cpu_matmul(&a, &b, ta, tb, &d)), || gpu_matmul(&a, &b, ta, tb, &d, None))?;
    // Only the gradients wanted: a frozen weight (LoRA's base) gets none, and costs no product;
    // nor does the graph keep the other operand alive for it (dA needs B, dB needs A).
    let (want_a, want_b) = (a.tracks_grad(), b.tracks_grad());
    let (a_shape, b_shape) = (a.shape().to_vec(), b.shape().to_vec());
    let (sa, sb) = (want_b.then_some(given_a), want_a.then_some(given_b));
    Ok(record("matmul", out, &[&a, &b], move |dc| {
        // C = op(A)·op(B): dA = dC·op(B)ᵀ (or its transpose), dB = op(A)ᵀ·dC (or its transpose).
        let da = match (&sb, ta) {
            (None, _) => None,
            (Some(sb), true) => Some(sum_to(&matmul_t(sb, dc, tb, true)?, &a_shape)?),
            (Some(sb), false) => Some(sum_to(&matmul_t(dc, sb, false, !tb)?, &a_shape)?),
        };
        let db = match (&sa, tb) {
            (None, _) => None,
            (Some(sa), true) => Some(sum_to(&matmul_t(dc, sa, true, ta)?, &b_shape)?),
            (Some(sa), false) => Some(sum_to(&matmul_t(sa, dc, !ta, false)?, &b_shape)?),
        };
        Ok(vec![da, db])
    }))
}

/// How many K splits a GPU matmul of `d` gets when its output alone gives few workgroups: up to
/// `target` workgroups of `tile` outputs, with at least 256 of K a split. Both kernels aim at ~256
/// workgroups, enough to fill a large GPU several times over. Measurements: docs/PERFORMANCE.md.
fn k_splits(d: &Dims, tile: (usize, usize), target: usize) -> usize {
    let tiles = d.m.div_ceil(tile.0) * d.n.div_ceil(tile.1) * d.batch;
    if tiles >= target / 2 || d.k < 512 {
        return 1;
    }
    (target / tiles).clamp(1, d.k / 256)
}

/// op(a)·op(b) on the GPU: a new tensor, or with `into` = (dst, accumulate) written or added into
/// dst, which is returned. The kernel writes (or adds) into dst itself where K is not split and
/// dst's offset is 4-aligned; otherwise the product is made, then copied or added in.
fn gpu_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, d: &Dims, into: Option<(&Tensor, bool)>) -> Result<Tensor> {
    // A few rows times a weight (decoding): a kernel that reads the weight once.
    if d.batch == 1 && !ta && tb && into.is_none() {
        if let Some(c) = super::matmul_gemv::gemv_nt(a, b, d.m, d.n, d.k)? {
            return c.view(&d.out_shape);
        }
    }
    let ctx = gpu::context()?;
    let coop = matmul_precision() == MatmulPrecision::F16; // only where the GPU has the matrices
                                                           // Operands in buffers larger than one binding (a view of a large weight) are bound from a
                                                           // window: their offsets below are within it (and keep their remainder mod 4).
    let ((a_buf, a_start), a_off) = a.gpu_window("matmul")?;
    let ((b_buf, b_start), b_off) = b.gpu_window("matmul")?;
    let aligned = [d.m, d.n, d.k, a_off, b_off].iter().all(|v| v % 4 == 0);
    // K per split, a multiple of the kernel's step of 8; then the splits that covers.
    let split_at = if coop { (COOP_TILE, 256) } else { (TILE, 256) };
    let (splits, ks) = match k_splits(d, split_at.0, split_at.1) {
        s if s > 1 && aligned => {
            let ks = d.k.div_ceil(s).div_ceil(8) * 8;
            (d.k.div_ceil(ks), ks)
        }
        _ => (1, d.k.max(1)),
    };
    // The wide kernel is the faster one where A is not transposed and K is not split.
    let wide = !coop && !ta && splits == 1;
    let (tm, tn) = match (coop, wide) {
        (true, _) => COOP_TILE,
        (_, true) => WIDE_TILE,
        _ => TILE,
    };
    let groups = [d.n.div_ceil(tn), d.m.div_ceil(tm), d.batch * splits];
    if groups.iter().any(|&g| g > 65535) {
        let (m, k, n, batch) = (d.m, d.k, d.n, d.batch);
        bail!(
            Shape,
            "matmul: {batch} products of [{m}, {k}]·[{k}, {n}] exceed the GPU's grid (at most 65535 products, {} rows, {} columns)",
            65535 * tm,
            65535 * tn
        );
    }
    let direct = into.filter(|(dst, _)| splits == 1 && dst.offset() % 4 == 0);
    let fresh = direct.is_none().then(|| ctx.alloc((splits * d.batch * d.m * d.n) as u64 * 4));
    let (out, c_off, acc) = match (&fresh, direct) {
        (_, Some((dst, acc))) => {
            let (out, c_off) = dst.gpu_window("matmul")?;
            (out, c_off, acc)
        }
        (buf, None) => ((buf.as_ref().expect("a fresh buffer unless written into dst"), 0), 0, false),
    };
    let u = |what, v| to_u32("matmul", what, v);
    let params = MatmulParams {
        m: u("rows", d.m)?,
        n: u("columns", d.n)?,
        k: u("inner dim", d.k)?,
        a_off: u("a offset", a_off)?,
        b_off: u("b offset", b_off)?,
        a_bs: u("a batch stride", d.a_bs)?,
        b_bs: u("b batch stride", d.b_bs)?,
        ta: ta as u32,
        tb: tb as u32,
        aligned: aligned as u32,
        splits: u("splits", splits)?,
        ks: u("split length", ks)?,
        c_off: u("output offset", c_off)?,
        acc: acc as u32,
    };
    let buffers = [(a_buf, a_start), (b_buf, b_start), out];
    let groups = groups.map(|g| g as u32);
    if coop {
        ctx.dispatch_windows(&COOP_KERNEL, "matmul_coop", &params, &buffers, groups)?;
    } else {
        // One entry point per transpose combination, each compiled to its own addressing.
        let entry = [["matmul_nn", "matmul_nt"], ["matmul_tn", "matmul_tt"]][ta as usize][tb as usize];
        ctx.dispatch_windows(if wide { &WIDE_KERNEL } else { &KERNEL }, entry, &params, &buffers, groups)?;
    }
    let Some(out) = fresh else { return Ok(direct.expect("written into dst").0.clone()) };
    let out = Tensor::from_gpu(out, &[splits, d.batch * d.m * d.n], Precision::FP32);
    let c = if splits == 1 { out.view(&d.out_shape)? } else { super::sum_rows(&out)?.view(&d.out_shape)? };
    match into {
        Some((dst, true)) => super::elementwise::add_into(dst, &c).map(|_| dst.clone()),
        Some((dst, false)) => super::flat::copy_into(dst, &c).map(|_| dst.clone()),
        None => Ok(c),
    }
}

/// dst (f32, shaped like op(a)·op(b)) = op(a)·op(b), or += with `accumulate`, in place and
/// without autograd: for rules that sum or place products (the fused cross-entropy's chunks).
/// The CPU writes straight into dst, and so does the GPU where it can (see gpu_matmul).
pub(crate) fn matmul_into(dst: &Tensor, a: &Tensor, b: &Tensor, ta: bool, tb: bool, accumulate: bool) -> Result<()> {
    let d = dims(a.shape(), b.shape(), ta, tb)?;
    if dst.dtype() != Precision::FP32 || dst.shape() != d.out_shape || dst.shares_storage(a) || dst.shares_storage(b) {
        bail!(Shape, "matmul_into: destination {:?} must be a separate f32 {:?}", dst.shape(), d.out_shape);
    }
    let (a, b) = (float_input("matmul", a)?, float_input("matmul", b)?);
    on_device(
        "matmul",
        same_device("matmul", &[dst, &a, &b])?,
        || {
            // SAFETY: dst holds the batch·M·N floats of the product (its shape was checked above).
            unsafe { cpu_gemm(dst.cpu_mut().f32().as_mut_ptr(), &a, &b, ta, tb, &d, accumulate) };
            Ok(())
        },
        || gpu_matmul(&a, &b, ta, tb, &d, Some((dst, accumulate))).map(drop),
    )
}

fn cpu_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, d: &Dims) -> Tensor {
    // Not zeroed first: the product writes every element without reading it (a memset on one
    // thread would leave the other idle).
    let len = d.batch * d.m * d.n;
    let mut out = Vec::with_capacity(len);
    // SAFETY: out has room for the batch·M·N elements cpu_gemm writes, all of them.
    unsafe {
        cpu_gemm(out.as_mut_ptr(), a, b, ta, tb, d, false);
        out.set_len(len);
    }
    Tensor::cpu_f32(out, &d.out_shape)
}

/// out = op(a)·op(b), or out += op(a)·op(b) with `accumulate` (without it, out is only written).
///
/// # Safety
/// `out` addresses batch·M·N floats.
unsafe fn cpu_gemm(out: *mut f32, a: &Tensor, b: &Tensor, ta: bool, tb: bool, d: &Dims, accumulate: bool) {
    let (ar, br) = (a.cpu(), b.cpu());
    let (av, bv) = (ar.f32(), br.f32());
    // Element strides (column, row) of op(A) [M, K] and op(B) [K, N].
    let (a_cs, a_rs) = if ta { (d.m, 1) } else { (1, d.k) };
    let (b_cs, b_rs) = if tb { (d.k, 1) } else { (1, d.n) };
    // A batch of A against one B (a weight) is one product of batch·M rows.
    let (m, batch) = if d.b_bs == 0 && !ta { (d.m * d.batch, 1) } else { (d.m, d.batch) };
    let p = matmul_cpu::Product { m, n: d.n, k: d.k, a_cs, a_rs, b_cs, b_rs, c_rs: d.n };
    let out = matmul_cpu::Ptr(out);
    // SAFETY: the strides address [M, K], [K, N] inside av, bv from these offsets (checked by
    // dims()), and product i's C lies inside out.
    let one = |i: usize| unsafe {
        matmul_cpu::gemm(out.get().add(i * m * d.n), &av[i * d.a_bs..], &bv[i * d.b_bs..], p, accumulate)
    };
    if p.is_small() && batch > 1 {
        // Products too small for threads of their own run side by side instead.
        (0..batch).into_par_iter().for_each(one);
    } else {
        (0..batch).for_each(one);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    /// matmul_into on the GPU where the kernel writes into dst (a 4-aligned view, K not split) and
    /// where it cannot (an odd offset; a split K), = and +=, in FP32 and, where the GPU has them,
    /// f16 cooperative matrices: against f64 sums, and the elements around the view untouched.
    /// Inputs are multiples of 1/8 below 2, exact in f16, so both precisions get one tolerance.
    #[test]
    fn matmul_into_gpu() {
        if gpu::context().is_err() {
            return; // skipped: tests/matmul.rs's gpu:: tests fail without a GPU under IRONTENSOR_REQUIRE_GPU=1
        }
        let vals =
            |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| ((i * 7 + seed) % 29) as f32 / 8.0 - 1.75).collect() };
        let mut precisions = vec![MatmulPrecision::FP32];
        if coop_matmul_supported() {
            precisions.push(MatmulPrecision::F16);
        }
        for precision in precisions {
            set_matmul_precision(precision).unwrap();
            // (M, N, K, dst offset): direct with vec4 writes, direct with single ones, an odd
            // offset, a split K (few tiles, long K), a whole f16 tile, edge tiles.
            let cases = [
                (36, 20, 48, 8),
                (37, 20, 50, 8),
                (37, 20, 50, 3),
                (64, 64, 1536, 4),
                (128, 256, 40, 4),
                (130, 260, 40, 4),
            ];
            for (m, n, k, off) in cases {
                for accumulate in [false, true] {
                    let (a, b) = (vals(m * k, 1), vals(k * n, 2));
                    let old = vals(off + m * n + 5, 3);
                    let at = Tensor::from_f32_on(&a, &[m, k], Device::Gpu).unwrap();
                    let bt = Tensor::from_f32_on(&b, &[k, n], Device::Gpu).unwrap();
                    let buf = Tensor::from_f32_on(&old, &[old.len()], Device::Gpu).unwrap();
                    let view = Tensor::from_storage(buf.storage().clone(), off, &[m, n], Precision::FP32);
                    matmul_into(&view, &at, &bt, false, false, accumulate).unwrap();
                    let got = buf.to_vec();
                    for (i, (&g, &o)) in got.iter().zip(&old).enumerate() {
                        let want = match i.checked_sub(off).filter(|&j| j < m * n) {
                            None => o as f64,
                            Some(j) => {
                                let dot: f64 = (0..k).map(|l| a[j / n * k + l] as f64 * b[l * n + j % n] as f64).sum();
                                dot + if accumulate { o as f64 } else { 0.0 }
                            }
                        };
                        let case = format!("{precision:?} {m}×{n}×{k} at {off}, accumulate {accumulate}");
                        assert!((g as f64 - want).abs() <= 1e-4 * want.abs().max(1.0), "{case}: [{i}] {g} vs {want}");
                    }
                }
            }
        }
        set_matmul_precision(MatmulPrecision::FP32).unwrap();
    }
}
