//! CPU storage and the helpers CPU kernels share (fixed-size parallel chunks).

use half::bf16;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);

/// Bytes of CPU tensor storage alive now, and the most alive at once since the last reset.
pub fn memory() -> (u64, u64) {
    (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

pub fn reset_peak_memory() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Host memory of one storage; the variant is the element type.
pub enum CpuBuffer {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    U32(Vec<u32>),
}

/// Elements per parallel task. Fixed, so reductions sum in the same order on every run.
pub const CHUNK: usize = 1 << 14;

impl CpuBuffer {
    /// Counts the buffer in `memory()`; every CPU storage is made through this.
    pub(crate) fn tracked(self) -> CpuBuffer {
        let live = LIVE.fetch_add(self.bytes(), Ordering::Relaxed) + self.bytes();
        PEAK.fetch_max(live, Ordering::Relaxed);
        self
    }

    fn bytes(&self) -> u64 {
        match self {
            CpuBuffer::F32(v) => v.len() as u64 * 4,
            CpuBuffer::BF16(v) => v.len() as u64 * 2,
            CpuBuffer::U32(v) => v.len() as u64 * 4,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuBuffer::F32(v) => v.len(),
            CpuBuffer::BF16(v) => v.len(),
            CpuBuffer::U32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        LIVE.fetch_sub(self.bytes(), Ordering::Relaxed);
    }
}

/// Runs `f` compiled for AVX2 and FMA where the CPU has them (checked at run time), else as it is.
/// The crate is built for baseline x86-64 (SSE2), so loops the compiler vectorises get 8 lanes
/// instead of 4 inside. Only code inlined into `f` gets the features, so callers mark `f`
/// `#[inline(always)]` (and the helpers it calls), and call this inside each parallel task: work
/// rayon sends to other threads leaves the copy.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has AVX-512F (checked just above), and so AVX2 and FMA.
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has both features (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// A new vector of `len` floats, made in parallel by `f(chunk index, chunk)` over chunks of
/// `chunk` floats. Each chunk is zeroed by its own task just before `f` gets it, where the
/// writes stay in cache: `vec![0.0; len]` would zero it all on the calling thread first while
/// the other cores wait (2-4% of a 2-core training step).
pub fn par_new(len: usize, chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)).enumerate().for_each(|(i, c)| {
        c.fill(std::mem::MaybeUninit::new(0.0));
        // SAFETY: every element of c was just written.
        f(i, unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) })
    });
    // SAFETY: the tasks wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// `vec![0.0; len]`, zeroed in parallel.
pub fn zeros(len: usize) -> Vec<f32> {
    par_new(len, CHUNK, |_, _| {})
}

/// A new vector with `v[i] = f(i)`, in parallel chunks of `CHUNK` (see `par_new`).
pub fn par_fill_new(len: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    par_new(len, CHUNK, |c, chunk| fill_chunk(c * CHUNK, chunk, &f))
}

/// A new vector of rows `cols` wide made by `f(row_index, row)`, in parallel (see `par_new`).
pub fn par_rows_new(len: usize, cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let rows_per_task = (CHUNK / cols.max(1)).max(1);
    par_new(len, rows_per_task * cols, |c, chunk| rows_chunk(c * rows_per_task, cols, chunk, &f))
}

#[inline(always)]
fn fill_chunk(base: usize, chunk: &mut [f32], f: &impl Fn(usize) -> f32) {
    simd(
        #[inline(always)]
        || {
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = f(base + j);
            }
        },
    )
}

#[inline(always)]
fn rows_chunk(first: usize, cols: usize, chunk: &mut [f32], f: &impl Fn(usize, &mut [f32])) {
    if cols == 0 {
        return;
    }
    simd(
        #[inline(always)]
        || {
            for (j, row) in chunk.chunks_mut(cols).enumerate() {
                f(first + j, row);
            }
        },
    )
}

/// `out[i] = f(i)` in parallel chunks of `CHUNK`.
pub fn par_fill(out: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| fill_chunk(c * CHUNK, chunk, &f));
}

/// Runs `f(row_index, row)` over the rows of `out` (`cols` wide) in parallel.
pub fn par_rows(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if cols == 0 {
        return;
    }
    let rows_per_task = (CHUNK / cols).max(1);
    out.par_chunks_mut(rows_per_task * cols)
        .enumerate()
        .for_each(|(c, chunk)| rows_chunk(c * rows_per_task, cols, chunk, &f));
}

/// e^x without a libm call, so that loops over rows vectorise (libm's `expf` is ~10× slower per
/// element here). x = n·ln 2 + r with |r| ≤ ln 2 / 2; e^r by its Taylor series to r⁷ (the
/// first term left out is < 6e-9 of the result); 2^n written into the exponent bits.
/// Within 1e-7 relative of e^x for x in [-87, 88] (measured); 0 below, e^88 above, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_359_4; // 355 / 512: n · LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 - LN2_HI
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND; // its low mantissa bits hold n
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let c = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    let p = c.iter().fold(0.0, |acc, &ck| acc * r + ck);
    let two_n = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * two_n
    }
}

/// Σ x in eight lanes (a plain `.sum()` adds in order, which does not vectorise).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    lanes(x, 0.0, |a, v| a + v).iter().sum()
}

/// The largest element of x (-∞ when empty), in eight lanes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    lanes(x, f32::NEG_INFINITY, f32::max).into_iter().fold(f32::NEG_INFINITY, f32::max)
}

#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> [f32; 8] {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = f(*a, v);
    }
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_against_f64() {
        let mut worst = 0.0f64;
        for i in -900_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            if x < -87.0 {
                assert_eq!(got, 0.0, "exp({x})");
                continue;
            }
            worst = worst.max((got - want).abs() / want);
        }
        // Measured 9.9e-8; 2 ulps of f32 near 1 are 2.4e-7.
        assert!(worst < 2.4e-7, "worst relative error {worst:e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(f32::NAN).is_nan());
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(100.0), super::exp(88.0));
    }

    #[test]
    fn lane_reductions() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        for n in [0, 1, 7, 8, 9, 37] {
            let want_sum: f64 = x[..n].iter().map(|&v| v as f64).sum();
            assert_eq!(super::sum(&x[..n]) as f64, want_sum, "sum of {n}");
            let want_max = x[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(super::max(&x[..n]), want_max, "max of {n}");
        }
    }
}
