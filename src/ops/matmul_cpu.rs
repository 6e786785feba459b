//! The CPU matmul: `gemm`'s single-threaded kernel on parts of the product, which rayon spreads.
//!
//! `gemm`'s own threading splits each cache block statically between threads and joins them after
//! every block; on a 2-core machine shared with other work one late thread stalls the other. Here
//! the product is cut into parts and idle threads steal them. How it is cut follows the shape
//! alone, never the thread count: a part of one row goes through `gemm`'s matrix-vector path and
//! a small one gets other cache blocks, both of which sum in another order, so the same cut on
//! every machine is what keeps results the same everywhere.

use rayon::prelude::*;

/// Multiply-adds a part should hold at least (~40 µs of one core).
const PART_WORK: usize = 1 << 22;
/// Most parts of one product (K splits: at most MAX_SPLIT_K).
const MAX_PARTS: usize = 48;
/// Most slices of C: enough to balance 2 cores when another process takes one for a while, and a
/// few more; each slice packs the other operand again.
const MAX_SLICES: usize = 16;
/// Rows or columns of a part: a multiple of `gemm`'s f32 tiles (8, 16, 24, 32, 48 by 4, 6, 12).
const PART_ALIGN: usize = 96;
/// K of each part of a split K, at least; and the most parts (each holds a copy of C).
const MIN_SPLIT_K: usize = 256;
const MAX_SPLIT_K: usize = 16;

/// One product C[M, N] (+)= op(A)[M, K] · op(B)[K, N] in raw form: element strides of op(A)
/// (`a_cs` between columns, `a_rs` between rows), the same for op(B); C is row-major.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_cs: usize,
    pub a_rs: usize,
    pub b_cs: usize,
    pub b_rs: usize,
}

/// How a product is cut: one piece, `parts` slices of the rows or columns of C, or `parts`
/// slices of K whose products are summed in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    Whole,
    Rows(usize),
    Cols(usize),
    SplitK(usize),
}

/// The plan for an M×N×K product.
pub(crate) fn plan(m: usize, n: usize, k: usize) -> Plan {
    let want = (m * n * k / PART_WORK).min(MAX_PARTS);
    if want < 2 {
        return Plan::Whole;
    }
    // Slices of C: each packs the other operand again, so keep them at least PART_ALIGN wide.
    let slices = want.min(m.max(n) / PART_ALIGN);
    let k_parts = want.min(k / MIN_SPLIT_K).min(MAX_SPLIT_K);
    // A small C with a long K (the weight gradients; d hidden of the output projection): K splits.
    if slices < want.min(8) && k_parts > slices {
        return Plan::SplitK(k_parts);
    }
    match slices.min(MAX_SLICES) {
        0 | 1 => Plan::Whole,
        s if n >= m => Plan::Cols(s),
        s => Plan::Rows(s),
    }
}

/// Shares a raw pointer with rayon's tasks; each task writes a disjoint part.
#[derive(Clone, Copy)]
struct Ptr<T>(T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T: Copy> Ptr<T> {
    /// The pointer; a method, so closures capture the whole Ptr (which is Send), not its field.
    fn get(self) -> T {
        self.0
    }
}

/// c = op(a)·op(b), or c += op(a)·op(b) with `accumulate`, cut as `plan` says.
///
/// # Safety
/// The strides of `p` address op(A) inside `a` and op(B) inside `b`; `c` holds M·N elements.
pub(crate) unsafe fn gemm(c: &mut [f32], a: &[f32], b: &[f32], p: Product, accumulate: bool, plan: Plan) {
    let (m, n, k) = (p.m, p.n, p.k);
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let (cp, ap, bp) = (Ptr(c.as_mut_ptr()), Ptr(a.as_ptr()), Ptr(b.as_ptr()));
    // One single-threaded gemm: rows [r0, r0 + rows) and columns [c0, c0 + cols) of C over
    // K range [k0, k0 + ks), into dst (row stride ldc).
    let part = move |dst: Ptr<*mut f32>, ldc: usize, (r0, rows): (usize, usize), (c0, cols), (k0, ks), acc| {
        let a = ap.get().add(r0 * p.a_rs + k0 * p.a_cs);
        let b = bp.get().add(k0 * p.b_rs + c0 * p.b_cs);
        let (a_cs, a_rs, b_cs, b_rs) = (p.a_cs as isize, p.a_rs as isize, p.b_cs as isize, p.b_rs as isize);
        let dst = dst.get().add(r0 * ldc + c0);
        // beta = 1 with `acc` (C = C + A·B), else C is written without being read.
        gemm::gemm(
            rows,
            cols,
            ks,
            dst,
            1,
            ldc as isize,
            acc,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    };
    let ranges = |len: usize, parts: usize| {
        let step = len.div_ceil(parts).div_ceil(PART_ALIGN) * PART_ALIGN;
        (0..len).step_by(step).map(move |s| (s, step.min(len - s)))
    };
    match plan {
        Plan::Whole => part(cp, n, (0, m), (0, n), (0, k), accumulate),
        Plan::Rows(parts) => {
            let rows: Vec<_> = ranges(m, parts).collect();
            rows.into_par_iter().for_each(|r| part(cp, n, r, (0, n), (0, k), accumulate));
        }
        Plan::Cols(parts) => {
            let cols: Vec<_> = ranges(n, parts).collect();
            cols.into_par_iter().for_each(|cr| part(cp, n, (0, m), cr, (0, k), accumulate));
        }
        Plan::SplitK(parts) => {
            let step = k.div_ceil(parts);
            let ks: Vec<_> = (0..k).step_by(step).map(|s| (s, step.min(k - s))).collect();
            // The first slice goes into C itself, the others into scratch, added after in order.
            let mut scratch = vec![0.0f32; (ks.len() - 1) * m * n];
            let sp = Ptr(scratch.as_mut_ptr());
            ks.par_iter().enumerate().for_each(|(i, &kr)| match i {
                0 => part(cp, n, (0, m), (0, n), kr, accumulate),
                _ => part(Ptr(sp.get().add((i - 1) * m * n)), n, (0, m), (0, n), kr, false),
            });
            c[..m * n].par_chunks_mut(crate::device::cpu::CHUNK).enumerate().for_each(|(j, out)| {
                let base = j * crate::device::cpu::CHUNK;
                for s in scratch.chunks_exact(m * n) {
                    out.iter_mut().zip(&s[base..]).for_each(|(o, v)| *o += v);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every plan, forced onto small awkward shapes, against f64 loops: all four transposes,
    /// = and +=, K of 1, slices that do not divide the dims.
    #[test]
    fn every_plan_against_f64() {
        let vals = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0).collect()
        };
        let shapes = [(1, 1, 1), (7, 193, 1), (197, 5, 33), (101, 290, 65), (3, 2, 1031), (300, 97, 517)];
        let plans = [Plan::Whole, Plan::Rows(2), Plan::Rows(5), Plan::Cols(3), Plan::SplitK(2), Plan::SplitK(7)];
        for (si, &(m, n, k)) in shapes.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a, b) = (vals(m * k, si), vals(k * n, si + 50));
                let (a_cs, a_rs) = if ta { (m, 1) } else { (1, k) };
                let (b_cs, b_rs) = if tb { (k, 1) } else { (1, n) };
                let p = Product { m, n, k, a_cs, a_rs, b_cs, b_rs };
                let old = vals(m * n, si + 99);
                let dots: Vec<f64> = (0..m * n)
                    .map(|idx| {
                        let (i, j) = (idx / n, idx % n);
                        (0..k).map(|l| a[i * a_rs + l * a_cs] as f64 * b[l * b_rs + j * b_cs] as f64).sum()
                    })
                    .collect();
                for plan in plans {
                    for accumulate in [false, true] {
                        let mut c = old.clone();
                        unsafe { gemm(&mut c, &a, &b, p, accumulate, plan) };
                        for (idx, &got) in c.iter().enumerate() {
                            let (i, j) = (idx / n, idx % n);
                            let want = dots[idx] + if accumulate { old[idx] as f64 } else { 0.0 };
                            let tol = 1e-5 * (k as f64).sqrt() + 1e-5 * want.abs();
                            let case = format!("{m}×{n}×{k} t{ta}{tb} {plan:?} acc {accumulate}");
                            assert!((got as f64 - want).abs() <= tol, "{case}: [{i}, {j}] {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn plans_of_training_shapes() {
        // Logits of the output projection, d hidden, d weight; a layer's product and its weight
        // gradients; small products stay whole.
        assert_eq!(plan(256, 32000, 256), Plan::Cols(16));
        assert_eq!(plan(256, 256, 32000), Plan::SplitK(16));
        assert_eq!(plan(32000, 256, 256), Plan::Rows(16));
        assert_eq!(plan(2048, 768, 256), Plan::Rows(16));
        assert_eq!(plan(768, 256, 2048), Plan::Rows(8));
        assert_eq!(plan(256, 256, 2048), Plan::SplitK(8));
        assert_eq!(plan(64, 64, 64), Plan::Whole);
    }
}
