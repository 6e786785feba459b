//! The 8-bit AdamW update of one parameter on the CPU and on the GPU (adamw8bit.wgsl): per block,
//! dequantize m and v, update them and the weight in f32, requantize with the block's new absmax.

use super::quant8::{maps, normalise, quantize, BLOCK};
use super::rounding::Elem;
use crate::device::gpu::{self, kernel_params, to_u32, GpuBuffer, Kernel, KernelParams};
use crate::{Precision, Result, Tensor};
use rayon::prelude::*;

/// Code words of one moment of one block (4 codes a word); a block's codes are 2·WORDS words.
pub(super) const WORDS: usize = BLOCK / 4;

pub(crate) static KERNEL: Kernel =
    Kernel { name: "adamw8bit", source: include_str!("adamw8bit.wgsl"), params: &Adam8Params::LAYOUT, codes: &[] };

kernel_params! {
    /// adamw8bit.wgsl's Params.
    pub(crate) struct Adam8Params {
        n: u32,
        blocks: u32,
        w_off: u32,
        g_off: u32,
        c_off: u32,
        s_off: u32,
        bf16: u32,
        key: u32,
        base: u32,
        use_ctl: u32,
        ctl_off: u32,
        lr: f32,
        wd: f32,
        b1: f32,
        b2: f32,
        eps: f32,
        bc1: f32,
        bc2_sqrt: f32,
    }
}

/// One parameter's step: AdamW's hyper-parameters with the bias corrections of this step,
/// its weight decay and stochastic-rounding key.
#[derive(Clone, Copy, Debug)]
pub(super) struct Step8 {
    pub lr: f32,
    pub wd: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// 1 - β1^t
    pub bc1: f32,
    /// sqrt(1 - β2^t)
    pub bc2_sqrt: f32,
    pub key: u32,
}

impl Step8 {
    fn adam(&self, w: f32, m: f32, v: f32) -> f32 {
        let w1 = w - self.lr * self.wd * w;
        w1 - self.lr * (m / self.bc1) / (v.sqrt() / self.bc2_sqrt + self.eps)
    }
}

/// Code of element j of a block's codes `c` (`at` 0 for m, WORDS for v).
fn code(c: &[u32], at: usize, j: usize) -> usize {
    ((c[at + j / 4] >> (8 * (j % 4))) & 0xff) as usize
}

/// The update on the CPU, the gradient scaled by `gscale`; `codes` and `absmax` as in
/// `AdamW8bit`'s state. Blocks run in parallel; each is computed in a fixed order.
pub(super) fn cpu_update<T: Elem>(
    w: &mut [T],
    g: &[f32],
    gscale: f32,
    codes: &mut [u32],
    absmax: &mut [f32],
    s: &Step8,
) {
    let [ms, vs] = maps();
    let blocks = w.par_chunks_mut(BLOCK).zip(codes.par_chunks_mut(2 * WORDS)).zip(absmax.par_chunks_mut(2));
    blocks.enumerate().for_each(|(b, ((wb, cb), ab))| {
        // Elements past the parameter's end (the last block) stay 0 and get 0's code.
        let (mut m, mut v) = ([0f32; BLOCK], [0f32; BLOCK]);
        for (j, w) in wb.iter_mut().enumerate() {
            let i = b * BLOCK + j;
            let gi = g[i] * gscale;
            m[j] = s.beta1 * (ms[code(cb, 0, j)] * ab[0]) + (1.0 - s.beta1) * gi;
            v[j] = s.beta2 * (vs[code(cb, WORDS, j)] * ab[1]) + (1.0 - s.beta2) * gi * gi;
            w.store(s.adam(w.load(), m[j], v[j]), s.key, i as u32);
        }
        let am = m.iter().fold(0f32, |a, x| a.max(x.abs()));
        let av = v.iter().fold(0f32, |a, &x| a.max(x));
        for (word, (cm, cv)) in m.chunks(4).zip(v.chunks(4)).enumerate() {
            let pack = |xs: &[f32], map, a| {
                xs.iter().enumerate().fold(0u32, |c, (h, &x)| c | (quantize(map, normalise(x, a)) as u32) << (8 * h))
            };
            cb[word] = pack(cm, ms, am);
            cb[WORDS + word] = pack(cv, vs, av);
        }
        (ab[0], ab[1]) = (am, av);
    });
}

/// The two code maps on the GPU (the kernel's `qmap`), uploaded once for a step's dispatches.
pub(super) fn gpu_maps() -> Result<GpuBuffer> {
    Ok(gpu::context()?.upload(bytemuck::cast_slice(maps().as_flattened())))
}

/// The update on the GPU: one dispatch, or for a parameter larger than one binding, one per
/// piece of whole blocks whose windows of every tensor fit one binding. `map`: `gpu_maps()`.
pub(super) fn gpu_update(
    map: &GpuBuffer,
    w: &Tensor,
    g: &Tensor,
    codes: &Tensor,
    absmax: &Tensor,
    control: Option<&Tensor>,
    s: &Step8,
) -> Result<()> {
    let ctx = gpu::context()?;
    let max = ctx.max_binding();
    let n = w.numel();
    let fits = [w, g, codes, absmax].iter().all(|t| t.gpu().buffer.size() <= max);
    // f32 weights and gradients take the most bytes an element (4); a window starts up to 256 early.
    let len = if fits { n } else { ((max - 256) / 4) as usize / BLOCK * BLOCK };
    let u = |what, v| to_u32("adamw8bit", what, v);
    for first in (0..n).step_by(len.max(BLOCK)) {
        let piece = len.min(n - first);
        let b0 = first / BLOCK;
        let (ws, w_off) = gpu::window(w.offset() + first, w.dtype().size_bytes());
        let (gs, g_off) = gpu::window(g.offset() + first, 4);
        let (cs, c_off) = gpu::window(codes.offset() + b0 * 2 * WORDS, 4);
        let (ss, s_off) = gpu::window(absmax.offset() + b0 * 2, 4);
        let blocks = piece.div_ceil(BLOCK);
        let params = Adam8Params {
            n: u("elements", piece)?,
            blocks: u("blocks", blocks)?,
            w_off: u("weight offset", w_off)?,
            g_off: u("gradient offset", g_off)?,
            c_off: u("code offset", c_off)?,
            s_off: u("scale offset", s_off)?,
            bf16: (w.dtype() == Precision::BF16) as u32,
            key: s.key,
            base: u("first element", first)?,
            use_ctl: control.is_some() as u32,
            ctl_off: u("control offset", control.map_or(0, |c| c.offset()))?,
            lr: s.lr,
            wd: s.wd,
            b1: s.beta1,
            b2: s.beta2,
            eps: s.eps,
            bc1: s.bc1,
            bc2_sqrt: s.bc2_sqrt,
        };
        // Without a control the kernel never reads that binding: g stands in for it.
        let ctl = control.map_or((g.gpu(), gs), |c| (c.gpu(), 0));
        let buffers = [(w.gpu(), ws), (g.gpu(), gs), (codes.gpu(), cs), (absmax.gpu(), ss), ctl, (map, 0)];
        ctx.dispatch_windows(&KERNEL, "update", &params, &buffers, gpu::grid(u("blocks", blocks)?))?;
    }
    Ok(())
}
