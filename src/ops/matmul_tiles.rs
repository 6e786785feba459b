//! The CPU matmul's register tiles: an MR×NR block of C from packed panels of A (MR values a k)
//! and B (NR values a k), in AVX-512, AVX2+FMA, or portable Rust, picked at run time.
//!
//! Every variant computes each element of C the same way: a sum from zero over the panel's k in
//! order, one fused multiply-add a step, then added to C (or stored). So the width of the tile,
//! and which variant runs, do not change a single bit of the result: a product gives the same C
//! on every x86-64 CPU with FMA and on aarch64, cut into parts any way.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// MR rows of A over a tile's k: element (i, p) at `ptr[i·rs + p·cs]`; one of the strides is 1
/// (a packed panel, rows of A in place, or columns of A in place).
#[derive(Clone, Copy)]
pub(crate) struct Rows {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// One tile: (k, A's rows, packed B panel of k·NR, C, row stride of C, add to C rather than store).
pub(crate) type TileFn = unsafe fn(usize, Rows, *const f32, *mut f32, usize, bool);

/// The tile variant this CPU runs: its rows (MR), columns (NR) and function.
#[derive(Clone, Copy)]
pub(crate) struct Tiles {
    pub mr: usize,
    pub nr: usize,
    pub run: TileFn,
}

/// The fastest variant the CPU has (the checks are cached loads after the first call).
pub(crate) fn best() -> Tiles {
    static BEST: std::sync::OnceLock<Tiles> = std::sync::OnceLock::new();
    *BEST.get_or_init(|| available()[0])
}

/// Every variant this CPU runs, fastest first (the tests run them all).
pub(crate) fn available() -> Vec<Tiles> {
    let mut v = Vec::with_capacity(3);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            v.push(Tiles { mr: 12, nr: 32, run: avx512_12x32 });
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            v.push(Tiles { mr: 6, nr: 16, run: avx2_6x16 });
        }
    }
    v.push(portable());
    v
}

/// The plain-Rust variant (also what the tests compare the others with).
pub(crate) fn portable() -> Tiles {
    Tiles { mr: 4, nr: 8, run: portable_4x8 }
}

/// # Safety
/// `a` addresses MR×k values; `b` holds k·NR packed values; C's MR rows of NR at stride `ldc` are writable; the CPU has
/// the variant's features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512_12x32(k: usize, a: Rows, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    if a.rs == 1 {
        avx512_body::<true>(k, a.ptr, a.cs, b, c, ldc, add)
    } else {
        avx512_body::<false>(k, a.ptr, a.rs, b, c, ldc, add)
    }
}

/// A's element (i, p) at a[p·stride + i] with `ROWS_ADJACENT`, else a[i·stride + p].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn avx512_body<const ROWS_ADJACENT: bool>(
    k: usize,
    a: *const f32,
    stride: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; 12];
    for p in 0..k {
        let (b0, b1) = (_mm512_loadu_ps(b.add(p * 32)), _mm512_loadu_ps(b.add(p * 32 + 16)));
        for (i, row) in acc.iter_mut().enumerate() {
            let at = if ROWS_ADJACENT { p * stride + i } else { i * stride + p };
            let ai = _mm512_set1_ps(*a.add(at));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let ci = c.add(i * ldc);
        for (h, &v) in row.iter().enumerate() {
            let v = if add { _mm512_add_ps(_mm512_loadu_ps(ci.add(h * 16)), v) } else { v };
            _mm512_storeu_ps(ci.add(h * 16), v);
        }
    }
}

/// # Safety
/// As `avx512_12x32` with 6 rows of 16; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_6x16(k: usize, a: Rows, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    if a.rs == 1 {
        avx2_body::<true>(k, a.ptr, a.cs, b, c, ldc, add)
    } else {
        avx2_body::<false>(k, a.ptr, a.rs, b, c, ldc, add)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_body<const ROWS_ADJACENT: bool>(
    k: usize,
    a: *const f32,
    stride: usize,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..k {
        let (b0, b1) = (_mm256_loadu_ps(b.add(p * 16)), _mm256_loadu_ps(b.add(p * 16 + 8)));
        for (i, row) in acc.iter_mut().enumerate() {
            let at = if ROWS_ADJACENT { p * stride + i } else { i * stride + p };
            let ai = _mm256_set1_ps(*a.add(at));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let ci = c.add(i * ldc);
        for (h, &v) in row.iter().enumerate() {
            let v = if add { _mm256_add_ps(_mm256_loadu_ps(ci.add(h * 8)), v) } else { v };
            _mm256_storeu_ps(ci.add(h * 8), v);
        }
    }
}

/// a·b + c rounded once where the target fuses it cheaply (aarch64 always; x86-64 built with
/// FMA), so that this variant matches the SIMD ones there; a·b + c rounded twice elsewhere
/// (a software fused multiply-add would be far slower than the product it serves).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_arch = "aarch64", target_feature = "fma")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// # Safety
/// As `avx512_12x32` with 4 rows of 8.
unsafe fn portable_4x8(k: usize, a: Rows, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    let mut acc = [[0.0f32; 8]; 4];
    for p in 0..k {
        let bp = b.add(p * 8);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = *a.ptr.add(i * a.rs + p * a.cs);
            for (j, x) in row.iter_mut().enumerate() {
                *x = fma(ai, *bp.add(j), *x);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let ci = c.add(i * ldc + j);
            *ci = if add { *ci + v } else { v };
        }
    }
}

/// Whether `transpose8` runs here (AVX).
pub(crate) fn has_transpose() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// dst[j·ld_dst + i] = src[i·ld_src + j] for i, j < 8: an 8×8 block transposed in registers.
///
/// # Safety
/// Both blocks are addressable; `has_transpose()` is true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn transpose8(src: *const f32, ld_src: usize, dst: *mut f32, ld_dst: usize) {
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ld_src)));
    // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves of rows i and i + 4.
    let u0 = _mm256_unpacklo_ps(r[0], r[1]);
    let u1 = _mm256_unpackhi_ps(r[0], r[1]);
    let u2 = _mm256_unpacklo_ps(r[2], r[3]);
    let u3 = _mm256_unpackhi_ps(r[2], r[3]);
    let u4 = _mm256_unpacklo_ps(r[4], r[5]);
    let u5 = _mm256_unpackhi_ps(r[4], r[5]);
    let u6 = _mm256_unpacklo_ps(r[6], r[7]);
    let u7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(u0, u2);
    let s1 = _mm256_shuffle_ps::<0xEE>(u0, u2);
    let s2 = _mm256_shuffle_ps::<0x44>(u1, u3);
    let s3 = _mm256_shuffle_ps::<0xEE>(u1, u3);
    let s4 = _mm256_shuffle_ps::<0x44>(u4, u6);
    let s5 = _mm256_shuffle_ps::<0xEE>(u4, u6);
    let s6 = _mm256_shuffle_ps::<0x44>(u5, u7);
    let s7 = _mm256_shuffle_ps::<0xEE>(u5, u7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ];
    for (j, v) in out.into_iter().enumerate() {
        _mm256_storeu_ps(dst.add(j * ld_dst), v);
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) unsafe fn transpose8(_: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("has_transpose() is false here")
}
