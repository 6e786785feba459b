//! The CPU matmul: packed panels and register tiles of our own (`matmul_tiles`), with rayon
//! across blocks of C.
//!
//! B is packed once a call (a block of columns at a time) into panels of NR columns over all of
//! K, which every task reads; a task owns up to MC rows by some panels of C, packs its rows of A
//! KC deep at a time and runs the register tile over them. Each element of C is summed over K in
//! blocks of KC, in order, each block from zero in a register and then added to C, so neither
//! the cut into tasks, nor the thread count, nor the tile variant changes a bit of the result.
//!
//! Why not `gemm`'s own kernel (0.18): it uses AVX2 where the CPU has AVX-512, and cut into
//! parts it packs B again for every part. Products of a few rows (decoding) still go to its
//! matrix-vector path: packing B there would read the weight twice.

use super::matmul_tiles::{self, Rows, Tiles};
use rayon::prelude::*;
use std::cell::Cell;

/// Depth of a block of K: every element of C is summed KC products at a time (fixed, so that
/// results follow the shape alone).
const KC: usize = 256;
/// Rows of C a task owns: a multiple of every variant's MR (12, 6, 4).
const MC: usize = 96;
/// Products of at most this many rows and many columns: tasks take all rows (see `packed`).
const WIDE_M: usize = 512;
/// Floats of packed B held at once (4 MiB); wider products take several column blocks.
const B_BLOCK: usize = 1 << 20;
/// Tasks a column block is cut into, about: enough that two threads end together when another
/// process takes one of them for a while.
const TASKS: usize = 32;
/// Multiply-adds below which a product runs on the calling thread.
const SERIAL_WORK: usize = 1 << 21;
/// Products with fewer rows go to `gemm`'s matrix-vector path.
const SMALL_M: usize = 8;
/// C of at most this many elements over K of at least 2·SPLIT_K: cut into slices of K.
const SPLIT_C: usize = 1 << 17;
const SPLIT_K: usize = 2048;

/// One product C[M, N] (+)= op(A)[M, K] · op(B)[K, N] in raw form: element strides of op(A)
/// (`a_cs` between columns, `a_rs` between rows), the same for op(B); C's rows are `c_rs` apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Product {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_cs: usize,
    pub a_rs: usize,
    pub b_cs: usize,
    pub b_rs: usize,
    pub c_rs: usize,
}

impl Product {
    /// Whether it is small enough to run on the calling thread alone.
    pub(crate) fn is_small(&self) -> bool {
        self.m * self.n * self.k < SERIAL_WORK
    }
}

/// Shares a raw pointer with rayon's tasks; each task writes a disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T>(pub T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T: Copy> Ptr<T> {
    /// The pointer; a method, so closures capture the whole Ptr (which is Send), not its field.
    pub fn get(self) -> T {
        self.0
    }
}

thread_local! {
    /// Packing buffers kept between calls (no page faults for a fresh one each product). Taken
    /// out while in use: a thread that waits in rayon may run another product meanwhile.
    static PACKED_A: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PACKED_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static PANEL_B: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// A buffer of at least `len` floats from `slot`, handed back with `put`.
fn take(slot: &'static std::thread::LocalKey<Cell<Vec<f32>>>, len: usize) -> Vec<f32> {
    let mut v = slot.with(Cell::take);
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

fn put(slot: &'static std::thread::LocalKey<Cell<Vec<f32>>>, v: Vec<f32>) {
    slot.with(|s| s.set(v));
}

/// c = op(a)·op(b), or c += op(a)·op(b) with `accumulate`; on rayon's threads unless small.
/// Without `accumulate` C is written and never read, so it may be uninitialised memory.
///
/// # Safety
/// The strides of `p` address op(A) inside `a` and op(B) inside `b`; `c` addresses M·N elements.
pub(crate) unsafe fn gemm(c: *mut f32, a: &[f32], b: &[f32], p: Product, accumulate: bool) {
    if p.m * p.n == 0 {
        return;
    }
    if p.k == 0 {
        if !accumulate {
            (0..p.m).for_each(|i| c.add(i * p.c_rs).write_bytes(0, p.n));
        }
        return;
    }
    if p.m < SMALL_M {
        return few_rows(c, a, b, p, accumulate);
    }
    match k_slices(&p) {
        1 => packed(c, a, b, p, accumulate, !p.is_small(), matmul_tiles::best()),
        slices => split_k(c, a, b, p, accumulate, slices),
    }
}

/// Slices of K a product is cut into (shape only): a small C over a long K (the fused
/// cross-entropy's d hidden, 256×256 over a 32000-word vocabulary) has too few tiles to share
/// and would pack B in many blocks one after another.
fn k_slices(p: &Product) -> usize {
    if p.m * p.n > SPLIT_C || p.k < 2 * SPLIT_K {
        return 1;
    }
    (p.k / SPLIT_K).min(16)
}

/// C (+)= the sum of the slices' products, each on one thread, added in order.
///
/// # Safety
/// As `gemm`.
unsafe fn split_k(c: *mut f32, a: &[f32], b: &[f32], p: Product, accumulate: bool, slices: usize) {
    let (mn, t) = (p.m * p.n, matmul_tiles::best());
    let step = p.k.div_ceil(slices).next_multiple_of(KC);
    let starts: Vec<usize> = (0..p.k).step_by(step).collect();
    // The first slice goes into C itself, the others into scratch, added after in order.
    let mut scratch = vec![0.0f32; (starts.len() - 1) * mn];
    let (cp, sp) = (Ptr(c), Ptr(scratch.as_mut_ptr()));
    starts.par_iter().enumerate().for_each(|(i, &k0)| {
        let part = Product { k: step.min(p.k - k0), c_rs: if i == 0 { p.c_rs } else { p.n }, ..p };
        let (a, b) = (&a[k0 * p.a_cs..], &b[k0 * p.b_rs..]);
        match i {
            0 => packed(cp.get(), a, b, part, accumulate, false, t),
            _ => packed(sp.get().add((i - 1) * mn), a, b, part, false, false, t),
        }
    });
    (0..p.m).into_par_iter().for_each(|i| {
        let out = std::slice::from_raw_parts_mut(cp.get().add(i * p.c_rs), p.n);
        for s in scratch.chunks_exact(mn) {
            out.iter_mut().zip(&s[i * p.n..]).for_each(|(o, v)| *o += v);
        }
    });
}

/// The packed product with the given tile variant, on rayon's threads with `parallel`.
///
/// # Safety
/// As `gemm`, with M, N, K ≥ 1.
pub(crate) unsafe fn packed(c: *mut f32, a: &[f32], b: &[f32], p: Product, accumulate: bool, parallel: bool, t: Tiles) {
    let (m, n, k, nr) = (p.m, p.n, p.k, t.nr);
    let job = Job { c: Ptr(c), a: Ptr(a.as_ptr()), b: Ptr(b.as_ptr()), p, accumulate, t };
    // Tasks: ((first row, end row), (first panel, end panel)) of the column block at j0.
    let run = |tasks: Vec<((usize, usize), (usize, usize))>, j0: usize, b: Option<Ptr<*const f32>>| {
        let task = |(rows, panels)| job.task(rows, j0, panels, b);
        match parallel {
            true => tasks.into_par_iter().for_each(task),
            false => tasks.into_iter().for_each(task),
        }
    };
    let panels = n.div_ceil(nr);
    if m <= WIDE_M && panels >= 2 * TASKS {
        // Few rows, many columns (the logits of a chunk of rows): each task takes all rows by a
        // run of panels and packs its own panels of B, so that packing (which waits on memory
        // for a large B) overlaps the other thread's products; each panel is packed once.
        let per = panels.div_ceil(TASKS);
        return run((0..panels).step_by(per).map(|jp| ((0, m), (jp, panels.min(jp + per)))).collect(), 0, None);
    }
    let nc = (B_BLOCK / (k * nr)).max(1) * nr;
    let mut bbuf = take(&PACKED_B, nc.min(n.next_multiple_of(nr)) * k);
    for j0 in (0..n).step_by(nc) {
        let cols = nc.min(n - j0);
        let panels = cols.div_ceil(nr);
        // Panel jp: k rows of nr columns of op(B), zeros past N.
        let pack_b = |(jp, dst): (usize, &mut [f32])| {
            let (col, valid) = (j0 + jp * nr, nr.min(cols - jp * nr));
            pack(dst, job.b.get().add(col * p.b_cs), nr, valid, k, p.b_cs, p.b_rs);
        };
        if parallel {
            bbuf[..panels * k * nr].par_chunks_mut(k * nr).enumerate().for_each(pack_b);
        } else {
            bbuf[..panels * k * nr].chunks_mut(k * nr).enumerate().for_each(pack_b);
        }
        // Tasks: (first row, first panel, end panel); a few panels wide when rows are few.
        let row_blocks = m.div_ceil(MC);
        let chunks = TASKS.div_ceil(row_blocks).min(panels.div_ceil(2)).max(1);
        let per = panels.div_ceil(chunks);
        let tasks = (0..row_blocks).flat_map(|rb| {
            (0..panels).step_by(per).map(move |jp| ((rb * MC, m.min(rb * MC + MC)), (jp, panels.min(jp + per))))
        });
        run(tasks.collect(), j0, Some(Ptr(bbuf.as_ptr())));
    }
    put(&PACKED_B, bbuf);
}

/// What the tasks of one product share.
#[derive(Clone, Copy)]
struct Job {
    c: Ptr<*mut f32>,
    a: Ptr<*const f32>,
    b: Ptr<*const f32>,
    p: Product,
    accumulate: bool,
    t: Tiles,
}

impl Job {
    /// Rows [r0, r1) of C by panels [jp0, jp1) of the column block at j0. B's panels come
    /// packed over all of K from `packed_b` (the block's first panel), or are packed here a KC
    /// block at a time.
    unsafe fn task(
        &self,
        (r0, r1): (usize, usize),
        j0: usize,
        (jp0, jp1): (usize, usize),
        packed_b: Option<Ptr<*const f32>>,
    ) {
        let (p, t, nr) = (self.p, self.t, self.t.nr);
        let rpanels = (r1 - r0).div_ceil(t.mr);
        // A is read in place where one of its strides is 1 and a panel has all MR rows;
        // other panels are packed (zeros past M), KC deep at a time.
        let in_place = |row: usize| (p.a_cs == 1 || p.a_rs == 1) && row + t.mr <= p.m;
        let mut abuf = take(&PACKED_A, rpanels * t.mr * KC.min(p.k));
        let mut bbuf = match packed_b {
            Some(_) => Vec::new(),
            None => take(&PANEL_B, KC.min(p.k) * nr),
        };
        for k0 in (0..p.k).step_by(KC) {
            let kc = KC.min(p.k - k0);
            for (ip, dst) in abuf.chunks_mut(t.mr * kc).take(rpanels).enumerate() {
                let row = r0 + ip * t.mr;
                if !in_place(row) {
                    let src = self.a.get().add(row * p.a_rs + k0 * p.a_cs);
                    pack(dst, src, t.mr, t.mr.min(p.m - row), kc, p.a_rs, p.a_cs);
                }
            }
            let add = self.accumulate || k0 > 0;
            for jp in jp0..jp1 {
                let col = j0 + jp * nr;
                let b_panel = match packed_b {
                    Some(b) => b.get().add(jp * p.k * nr + k0 * nr),
                    None => {
                        let src = self.b.get().add(col * p.b_cs + k0 * p.b_rs);
                        pack(&mut bbuf, src, nr, nr.min(p.n - col), kc, p.b_cs, p.b_rs);
                        bbuf.as_ptr()
                    }
                };
                for ip in 0..rpanels {
                    let row = r0 + ip * t.mr;
                    let a_panel = match in_place(row) {
                        true => Rows { ptr: self.a.get().add(row * p.a_rs + k0 * p.a_cs), rs: p.a_rs, cs: p.a_cs },
                        false => Rows { ptr: abuf.as_ptr().add(ip * t.mr * kc), rs: 1, cs: t.mr },
                    };
                    let dst = self.c.get().add(row * p.c_rs + col);
                    tile(t, kc, a_panel, b_panel, dst, p.c_rs, add, (t.mr.min(p.m - row), nr.min(p.n - col)));
                }
            }
        }
        put(&PACKED_A, abuf);
        if packed_b.is_none() {
            put(&PANEL_B, bbuf);
        }
    }
}

/// One register tile into C at `dst`; where fewer than MR×NR elements of C remain (`valid` rows
/// and columns), through a scratch tile, with the same sums.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile(
    t: Tiles,
    k: usize,
    a: Rows,
    b: *const f32,
    dst: *mut f32,
    ldc: usize,
    add: bool,
    valid: (usize, usize),
) {
    if valid == (t.mr, t.nr) {
        return (t.run)(k, a, b, dst, ldc, add);
    }
    let mut scratch = [0.0f32; 12 * 32];
    (t.run)(k, a, b, scratch.as_mut_ptr(), t.nr, false);
    for i in 0..valid.0 {
        for j in 0..valid.1 {
            let (c, v) = (dst.add(i * ldc + j), scratch[i * t.nr + j]);
            *c = if add { *c + v } else { v };
        }
    }
}

/// Packs a panel: dst[p·w + i] = src[i·i_stride + p·p_stride] for i < valid and p < depth, and
/// zeros for valid ≤ i < w. Reads along whichever stride is 1.
///
/// # Safety
/// `src` addresses every element named; `dst` holds depth·w floats.
unsafe fn pack(
    dst: &mut [f32],
    src: *const f32,
    w: usize,
    valid: usize,
    depth: usize,
    i_stride: usize,
    p_stride: usize,
) {
    let dst = &mut dst[..depth * w];
    if i_stride == 1 {
        for (p, out) in dst.chunks_exact_mut(w).enumerate() {
            let row = std::slice::from_raw_parts(src.add(p * p_stride), valid);
            out[..valid].copy_from_slice(row);
            out[valid..].fill(0.0);
        }
        return;
    }
    if valid < w {
        dst.fill(0.0);
    }
    // Blocks of 8×8 where the reads run along p, transposed in registers (element by element,
    // the strided writes cost more than the product they feed when M is a few hundred).
    let blocks = match p_stride == 1 && matmul_tiles::has_transpose() {
        true => valid / 8 * 8,
        false => 0,
    };
    let whole = depth / 8 * 8;
    for i0 in (0..blocks).step_by(8) {
        for p0 in (0..whole).step_by(8) {
            matmul_tiles::transpose8(src.add(i0 * i_stride + p0), i_stride, dst.as_mut_ptr().add(p0 * w + i0), w);
        }
    }
    // The rest element by element: rows past the last block of 8, and the last depth % 8 of the blocks' rows.
    for i in 0..valid {
        let s = src.add(i * i_stride);
        for p in if i < blocks { whole } else { 0 }..depth {
            *dst.get_unchecked_mut(p * w + i) = *s.add(p * p_stride);
        }
    }
}

/// Products of fewer than SMALL_M rows: `gemm`'s matrix-vector path, on slices of the columns
/// (their number follows the shape alone: a slice sums in the order of its own width).
unsafe fn few_rows(c: *mut f32, a: &[f32], b: &[f32], p: Product, accumulate: bool) {
    const SLICE: usize = 96; // columns, at least; a multiple of `gemm`'s tiles
    let slices = (p.m * p.n * p.k / SERIAL_WORK).min(16).min(p.n / SLICE).max(1);
    let step = p.n.div_ceil(slices).next_multiple_of(SLICE);
    let (cp, ap, bp) = (Ptr(c), Ptr(a.as_ptr()), Ptr(b.as_ptr()));
    let part = move |c0: usize| {
        let cols = step.min(p.n - c0);
        let (a_cs, a_rs, b_cs, b_rs) = (p.a_cs as isize, p.a_rs as isize, p.b_cs as isize, p.b_rs as isize);
        let (dst, b) = (cp.get().add(c0), bp.get().add(c0 * p.b_cs));
        // beta = 1 with `accumulate` (C = C + A·B), else C is written without being read.
        #[rustfmt::skip]
        gemm::gemm(p.m, cols, p.k, dst, 1, p.c_rs as isize, accumulate, ap.get(), a_cs, a_rs, b, b_cs, b_rs,
                   1.0, 1.0, false, false, false, gemm::Parallelism::None);
    };
    let starts: Vec<usize> = (0..p.n).step_by(step).collect();
    starts.into_par_iter().for_each(part);
}

#[cfg(test)]
#[path = "matmul_cpu_tests.rs"]
mod tests;
