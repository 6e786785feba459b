//! Batched matrix multiply with transpose flags: CPU through `gemm`, GPU through a tiled WGSL kernel.

use super::{float_input, on_device, same_device, sum_to};
use crate::autograd::record;
use crate::device::gpu::{self, Kernel};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel = Kernel { name: "matmul", source: include_str!("matmul.wgsl") };

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
    let (a, b) = (float_input("matmul", a)?, float_input("matmul", b)?);
    let device = same_device("matmul", &[&a, &b])?;
    let d = dims(a.shape(), b.shape(), ta, tb)?;
    let out = on_device(
        "matmul",
        device,
        || Ok(cpu_matmul(&a, &b, ta, tb, &d)),
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc((d.batch * d.m * d.n) as u64 * 4);
            if d.batch > 65535 {
                bail!(Shape, "matmul: batch of {} exceeds the GPU's 65535; reshape into larger matrices", d.batch);
            }
            let params =
                [d.m, d.n, d.k, ta as usize, tb as usize, a.offset(), b.offset(), d.a_bs, d.b_bs].map(|v| v as u32);
            let groups = [d.n.div_ceil(64) as u32, d.m.div_ceil(64) as u32, d.batch as u32];
            ctx.dispatch(&KERNEL, "matmul", &params, &[a.gpu(), &out, b.gpu()], groups);
            Ok(Tensor::from_gpu(out, &d.out_shape, Precision::FP32))
        },
    )?;
    let (sa, sb) = (a.clone(), b.clone());
    Ok(record("matmul", out, &[&a, &b], move |dc| {
        // C = op(A)·op(B): dA = dC·op(B)ᵀ (or its transpose), dB = op(A)ᵀ·dC (or its transpose).
        let da = if ta { matmul_t(&sb, dc, tb, true)? } else { matmul_t(dc, &sb, false, !tb)? };
        let db = if tb { matmul_t(dc, &sa, true, ta)? } else { matmul_t(&sa, dc, !ta, false)? };
        Ok(vec![Some(sum_to(&da, sa.shape())?), Some(sum_to(&db, sb.shape())?)])
    }))
}

fn cpu_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, d: &Dims) -> Tensor {
    let (ar, br) = (a.cpu(), b.cpu());
    let (av, bv) = (ar.f32(), br.f32());
    let mut out = vec![0.0f32; d.batch * d.m * d.n];
    // Element strides (column, row) of op(A) [M, K] and op(B) [K, N].
    let (a_cs, a_rs) = if ta { (d.m, 1) } else { (1, d.k) };
    let (b_cs, b_rs) = if tb { (d.k, 1) } else { (1, d.n) };
    let threads = rayon::current_num_threads();
    let par = if d.m * d.n * d.k >= 1 << 15 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for i in 0..d.batch {
        let c = &mut out[i * d.m * d.n..(i + 1) * d.m * d.n];
        let (a_base, b_base) = (i * d.a_bs, i * d.b_bs);
        if d.k == 0 || d.m * d.n == 0 {
            continue;
        }
        // SAFETY: the strides address [M, K], [K, N] and [M, N] inside av, bv and c (checked by dims()).
        unsafe {
            gemm::gemm(
                d.m,
                d.n,
                d.k,
                c.as_mut_ptr(),
                1,
                d.n as isize,
                false,
                av[a_base..].as_ptr(),
                a_cs as isize,
                a_rs as isize,
                bv[b_base..].as_ptr(),
                b_cs as isize,
                b_rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    Tensor::cpu_f32(out, &d.out_shape)
}
