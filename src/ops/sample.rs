//! Token sampling: one id per row of logits, greedy or by temperature with top-k and top-p.

use super::{float_input, on_device};
use crate::device::gpu::{self, grid, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::{bail, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel =
    Kernel { name: "sample", source: include_str!("sample.wgsl"), params: &SampleParams::LAYOUT, codes: &[] };

kernel_params! {
    /// sample.wgsl's Params.
    pub(crate) struct SampleParams {
        rows: u32,
        vocab: u32,
        logits_off: u32,
        top_k: u32,
        temperature: f32,
        top_p: f32,
    }
}

/// How a token is drawn from a row of logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax, ties to the lowest id).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    pub top_p: f32,
}

impl Sampling {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// One token id per row of `logits` [B, V] -> u32 [B], on the logits' device. `uniforms` holds a
/// draw in [0, 1) per row (ignored when greedy); the CPU and the GPU pick the same id for the
/// same logits and draws, except when a draw lies within rounding (f32 on the GPU, f64 here) of
/// a boundary between two tokens' probabilities.
pub fn sample(logits: &Tensor, s: &Sampling, uniforms: &[f64]) -> Result<Tensor> {
    let &[rows, vocab] = logits.shape() else {
        bail!(Shape, "sample: logits must be [B, V], got {:?}", logits.shape());
    };
    if rows == 0 || vocab == 0 {
        bail!(Shape, "sample: logits must be non-empty, got {:?}", logits.shape());
    }
    if !s.is_greedy() && uniforms.len() != rows {
        bail!(Invalid, "sample: {} draws given for {rows} rows of logits {:?}", uniforms.len(), logits.shape());
    }
    if !(s.temperature.is_finite() && s.top_p > 0.0) {
        bail!(Invalid, "sample: temperature must be finite and top_p > 0, got {} and {}", s.temperature, s.top_p);
    }
    let logits = float_input("sample", logits)?;
    on_device(
        "sample",
        logits.device(),
        || {
            let l = logits.to_vec();
            let ids = (0..rows)
                .map(|r| sample_row(&l[r * vocab..(r + 1) * vocab], s, uniforms.get(r).copied().unwrap_or(0.0)));
            Tensor::from_u32_on(&ids.collect::<Vec<_>>(), &[rows], crate::Device::Cpu)
        },
        || gpu_sample(&logits, rows, vocab, s, uniforms),
    )
}

fn gpu_sample(logits: &Tensor, rows: usize, vocab: usize, s: &Sampling, uniforms: &[f64]) -> Result<Tensor> {
    let ctx = gpu::context()?;
    let params = SampleParams {
        rows: to_u32("sample", "rows", rows)?,
        vocab: to_u32("sample", "vocabulary", vocab)?,
        logits_off: to_u32("sample", "offset", logits.offset())?,
        top_k: to_u32("sample", "top_k", s.top_k.min(vocab))?,
        temperature: s.temperature,
        top_p: s.top_p,
    };
    let ids = ctx.alloc(rows as u64 * 4);
    if s.is_greedy() {
        ctx.dispatch(&KERNEL, "greedy", &params, &[logits.gpu(), &ids], grid(params.rows))?;
    } else {
        // f32 draws below 1, so that a draw never reaches the whole mass by rounding up.
        let below_one = f32::from_bits(1.0f32.to_bits() - 1);
        let u: Vec<f32> = uniforms.iter().map(|&u| (u as f32).min(below_one)).collect();
        let u = ctx.upload(bytemuck::cast_slice(&u));
        let scratch = ctx.alloc((rows * vocab) as u64 * 4);
        ctx.dispatch(&KERNEL, "sample", &params, &[logits.gpu(), &ids, &u, &scratch], grid(params.rows))?;
    }
    Ok(Tensor::from_gpu(ids, &[rows], Precision::U32))
}

/// The CPU kernel, and the reference: the candidates sorted by descending logit (ties by id), cut
/// to the top k, softmax at the temperature, cut to the smallest prefix whose probability
/// reaches top_p, then the candidate where the running probability passes `u` times the total.
pub fn sample_row(logits: &[f32], s: &Sampling, u: f64) -> u32 {
    if s.is_greedy() {
        return logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best }) as u32;
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a])); // stable: ties keep the lower id first
    if s.top_k > 0 {
        idx.truncate(s.top_k);
    }
    let m = logits[idx[0]];
    let mut probs: Vec<f64> = idx.iter().map(|&i| (((logits[i] - m) / s.temperature) as f64).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= s.top_p as f64
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = u * total;
    for (p, &i) in probs.iter().zip(&idx) {
        if u < *p {
            return i as u32;
        }
        u -= p;
    }
    idx[idx.len() - 1] as u32
}
