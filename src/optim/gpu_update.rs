//! The optimizer update on the GPU: optim.wgsl's `update` over runs of parameters that share
//! buffers, and over binding-sized pieces of a parameter larger than one binding.

use super::{Hyper, OptimParams, Settings, KERNEL};
use crate::device::gpu;
use crate::device::gpu::to_u32;
use crate::ops::{flat, grid_for};
use crate::{Precision, Result, Tensor};

/// The update on the GPU: one dispatch for each run of parameters whose weights, gradients and
/// states share buffers (a model's flat parameters: see `ops::flat`), and for a parameter larger
/// than one GPU binding, one per piece of it that the bindings hold.
pub(super) fn gpu_update(
    w: &[Tensor],
    g: &[Tensor],
    s: &[Tensor],
    control: Option<&Tensor>,
    set: &Settings,
    hs: &[Hyper],
) -> Result<()> {
    let ctx = gpu::context()?;
    let max = ctx.max_binding();
    let bf16 = |k: usize| w[k].dtype() == Precision::BF16;
    let big = |k: usize| [&w[k], &g[k], &s[k]].iter().any(|t| t.gpu().buffer.size() > max);
    // Two bf16 parameters may share a u32 word unless both start and end on even elements.
    let whole_words = |k: usize| !bf16(k) || (w[k].offset().is_multiple_of(2) && w[k].numel().is_multiple_of(2));
    let joins = |a: usize, k: usize| {
        w[a].shares_storage(&w[k])
            && g[a].shares_storage(&g[k])
            && s[a].shares_storage(&s[k])
            && bf16(a) == bf16(k)
            && whole_words(a)
            && whole_words(k)
            && !big(a)
            && !big(k)
    };
    let update = Update { control, set };
    for run in flat::runs(w.len(), joins) {
        let k = run.start;
        if !big(k) {
            let pieces: Vec<Piece> = run
                .map(|k| Piece {
                    k,
                    w_off: w[k].offset(),
                    g_off: g[k].offset(),
                    s_off: s[k].offset(),
                    first: 0,
                    n: w[k].numel(),
                })
                .collect();
            update.dispatch(w, g, s, hs, &pieces, [0; 3])?;
            continue;
        }
        // Pieces of a multiple of 64 elements (bf16 pieces own whole words) whose state, the
        // largest of the three (`width` f32 an element), fits one binding after its window's start.
        let width = set.rule.width();
        let len = ((max - 256) / (4 * width.max(1)) as u64) as usize / 64 * 64;
        let size = |t: &Tensor| t.dtype().size_bytes();
        for first in (0..w[k].numel()).step_by(len.max(64)) {
            let (ws, w_off) = gpu::window(w[k].offset() + first, size(&w[k]));
            let (gs, g_off) = gpu::window(g[k].offset() + first, 4);
            let (ss, s_off) = gpu::window(s[k].offset() + first * width, 4);
            let piece = Piece { k, w_off, g_off, s_off, first, n: len.min(w[k].numel() - first) };
            update.dispatch(w, g, s, hs, &[piece], [ws, gs, ss])?;
        }
    }
    Ok(())
}

/// Elements `first..first + n` of parameter `k`, at these element offsets of the bound windows.
struct Piece {
    k: usize,
    w_off: usize,
    g_off: usize,
    s_off: usize,
    first: usize,
    n: usize,
}

struct Update<'a> {
    control: Option<&'a Tensor>,
    set: &'a Settings,
}

impl Update<'_> {
    /// One dispatch over `pieces`, which share their buffers, bound from byte offsets `starts`
    /// (weights, gradients, state).
    fn dispatch(
        &self,
        w: &[Tensor],
        g: &[Tensor],
        s: &[Tensor],
        hs: &[Hyper],
        pieces: &[Piece],
        starts: [u64; 3],
    ) -> Result<()> {
        let ctx = gpu::context()?;
        let k = pieces[0].k;
        let bf16 = w[k].dtype() == Precision::BF16;
        let mut table: Vec<u32> = Vec::with_capacity(8 * pieces.len());
        let mut threads = 0;
        for p in pieces {
            let u = |what, v| to_u32("optimizer step", what, v);
            table.extend([u("weight offset", p.w_off)?, u("gradient offset", p.g_off)?, u("state offset", p.s_off)?]);
            table.extend([u("elements", p.n)?, hs[p.k].wd.to_bits(), hs[p.k].key, u("threads", threads)?]);
            table.push(u("first element", p.first)?);
            // BF16: one thread per u32 word, so the two halves of a word never race.
            threads += if bf16 { (p.w_off + p.n).div_ceil(2) - p.w_off / 2 } else { p.n };
        }
        if threads == 0 {
            return Ok(());
        }
        let (code, [b1, b2, eps, bc1, bc2_sqrt, rho, tokens]) = self.set.rule.params();
        let params = OptimParams {
            n: to_u32("optimizer step", "threads", threads)?,
            g_off: 0,
            key: 0,
            segments: to_u32("optimizer step", "segments", pieces.len())?,
            bf16: bf16 as u32,
            rule: code as u32,
            lr: self.set.lr,
            b1,
            b2,
            eps,
            bc1,
            bc2_sqrt,
            use_ctl: self.control.is_some() as u32,
            ctl_off: to_u32("optimizer step", "control offset", self.control.map_or(0, |c| c.offset()))?,
            rho,
            tokens,
        };
        // Without a control the kernel never reads that binding: g stands in for it.
        let ctl = self.control.map_or((g[k].gpu(), starts[1]), |c| (c.gpu(), 0));
        let table = ctx.upload(bytemuck::cast_slice(&table));
        let [ws, gs, ss] = starts;
        let buffers = [(w[k].gpu(), ws), (g[k].gpu(), gs), (s[k].gpu(), ss), ctl, (&table, 0)];
        ctx.dispatch_windows(&KERNEL, "update", &params, &buffers, grid_for(threads))
    }
}
