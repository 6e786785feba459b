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

/// `out[i] = f(i)` in parallel chunks of `CHUNK`.
pub fn par_fill(out: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let base = c * CHUNK;
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = f(base + j);
        }
    });
}

/// Runs `f(row_index, row)` over the rows of `out` (`cols` wide) in parallel.
pub fn par_rows(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if cols == 0 {
        return;
    }
    let rows_per_task = (CHUNK / cols).max(1);
    out.par_chunks_mut(rows_per_task * cols).enumerate().for_each(|(c, chunk)| {
        for (j, row) in chunk.chunks_mut(cols).enumerate() {
            f(c * rows_per_task + j, row);
        }
    });
}
