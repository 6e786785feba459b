//! Tests of the CPU matmul (`matmul_cpu.rs`, `matmul_tiles.rs`).

use super::*;

fn vals(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0).collect()
}

/// op(A), op(B) of an M×N×K product with the given transposes, and its Product.
fn operands(m: usize, n: usize, k: usize, ta: bool, tb: bool, seed: usize) -> (Vec<f32>, Vec<f32>, Product) {
    let (a_cs, a_rs) = if ta { (m, 1) } else { (1, k) };
    let (b_cs, b_rs) = if tb { (k, 1) } else { (1, n) };
    (vals(m * k, seed), vals(k * n, seed + 50), Product { m, n, k, a_cs, a_rs, b_cs, b_rs, c_rs: n })
}

/// C (+)= A·B as the kernels define it, in scalar f32: each element summed over blocks of KC
/// from zero with one rounding a step (`mul_add`), each block then added to C.
fn blocked(old: &[f32], a: &[f32], b: &[f32], p: Product, accumulate: bool) -> Vec<f32> {
    let mut c = old.to_vec();
    for (idx, out) in c.iter_mut().enumerate() {
        let (i, j) = (idx / p.n, idx % p.n);
        for k0 in (0..p.k).step_by(KC) {
            let mut acc = 0.0f32;
            for l in k0..p.k.min(k0 + KC) {
                acc = a[i * p.a_rs + l * p.a_cs].mul_add(b[l * p.b_rs + j * p.b_cs], acc);
            }
            *out = if accumulate || k0 > 0 { *out + acc } else { acc };
        }
    }
    c
}

/// Every variant and cut against f64 sums on awkward shapes (rows past MC and not a multiple of
/// any MR, columns not a multiple of any NR, K past KC and K = 1, several column blocks, few
/// rows by many columns), all
/// four transposes, = and +=, each variant the CPU runs, serial and on threads. The fused ones
/// must also equal the blocked scalar sums bit for bit: the result may not depend on the cut or
/// the CPU.
#[test]
fn packed_against_f64_and_bitwise() {
    let shapes = [
        (8, 1, 1),
        (13, 33, 1),
        (197, 5, 33),
        (101, 290, 65),
        (9, 2, 1031),
        (300, 97, 517),
        (9, 1100, 1031),
        (13, 2100, 300),
    ];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, b, p) = operands(m, n, k, ta, tb, si);
            let old = vals(m * n, si + 99);
            let dots: Vec<f64> = (0..m * n)
                .map(|idx| {
                    let (i, j) = (idx / n, idx % n);
                    (0..k).map(|l| a[i * p.a_rs + l * p.a_cs] as f64 * b[l * p.b_rs + j * p.b_cs] as f64).sum()
                })
                .collect();
            for accumulate in [false, true] {
                let exact = blocked(&old, &a, &b, p, accumulate);
                let variants = matmul_tiles::available();
                let runs = variants.iter().enumerate().flat_map(|(i, &t)| [(t, true, i), (t, false, i)]);
                for (tiles, parallel, i) in runs {
                    // The portable variant fuses only where the target does (see `fma` there).
                    let simd = i + 1 < variants.len();
                    let mut c = old.clone();
                    unsafe { packed(c.as_mut_ptr(), &a, &b, p, accumulate, parallel, tiles) };
                    let case =
                        format!("{m}×{n}×{k} t{ta}{tb} {}×{} parallel {parallel} acc {accumulate}", tiles.mr, tiles.nr);
                    for (idx, &got) in c.iter().enumerate() {
                        let want = dots[idx] + if accumulate { old[idx] as f64 } else { 0.0 };
                        let tol = 1e-5 * (k as f64).sqrt() + 1e-5 * want.abs();
                        assert!((got as f64 - want).abs() <= tol, "{case}: [{}, {}] {got} vs {want}", idx / n, idx % n);
                    }
                    if simd || cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
                        let first = c.iter().zip(&exact).position(|(x, y)| x.to_bits() != y.to_bits());
                        assert!(first.is_none(), "{case}: element {first:?} differs from the blocked sums");
                    }
                }
            }
        }
    }
}

/// `gemm` itself: a few rows (the matrix-vector path), K = 0, the packed path and slices of K,
/// into a C whose rows lie `pad` elements apart beyond N (what lies between must stay).
#[test]
fn gemm_dispatch_against_f64() {
    // (9, 20, 5000) and (33, 17, 9000) are cut into slices of K.
    let shapes =
        [(1, 1, 1), (1, 300, 70), (7, 1000, 300), (3, 5, 0), (8, 40, 9), (64, 64, 64), (9, 20, 5000), (33, 17, 9000)];
    for (m, n, k) in shapes {
        for ((ta, tb), pad) in [((false, false), 0), ((true, true), 0), ((false, true), 5)] {
            let (a, b, p) = operands(m, n, k, ta, tb, m + n);
            let p = Product { c_rs: n + pad, ..p };
            for accumulate in [false, true] {
                let old = vals(m * p.c_rs, 7);
                let mut c = old.clone();
                unsafe { gemm(c.as_mut_ptr(), &a, &b, p, accumulate) };
                for (idx, &got) in c.iter().enumerate() {
                    let (i, j) = (idx / p.c_rs, idx % p.c_rs);
                    if j >= n {
                        assert_eq!(got, old[idx], "{m}×{n}×{k} pad {pad}: [{i}, {j}] was written");
                        continue;
                    }
                    let dot: f64 =
                        (0..k).map(|l| a[i * p.a_rs + l * p.a_cs] as f64 * b[l * p.b_rs + j * p.b_cs] as f64).sum();
                    let want = dot + if accumulate { old[idx] as f64 } else { 0.0 };
                    let tol = 1e-5 * (k as f64).sqrt() + 1e-5 * want.abs();
                    let case = format!("{m}×{n}×{k} t{ta}{tb} pad {pad} acc {accumulate}");
                    assert!((got as f64 - want).abs() <= tol, "{case}: [{i}, {j}] {got} vs {want}");
                }
            }
        }
    }
}

/// The cut follows the shape alone: one thread and two give the same bits, on every path
/// (few rows, packed, slices of K).
#[test]
fn same_bits_on_any_thread_count() {
    assert_eq!(k_slices(&operands(33, 17, 9000, false, false, 0).2), 4);
    for (m, n, k) in [(3, 700, 300), (200, 300, 100), (33, 17, 9000)] {
        let (a, b, p) = operands(m, n, k, true, false, 3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![0.0f32; m * n];
            pool.install(|| unsafe { gemm(c.as_mut_ptr(), &a, &b, p, false) });
            c
        };
        let (one, two) = (run(1), run(2));
        assert!(one.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}×{n}×{k}");
    }
}
