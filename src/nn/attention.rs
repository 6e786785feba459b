//! Causal self-attention with RoPE and grouped-query heads, through FlashAttention.

use super::{KvCache, Linear, Loader, ModelConfig};
use crate::ops::{self, Rope};
use crate::{Result, Tensor};

#[derive(Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope: Rope,
}

impl Attention {
    pub fn load(l: &mut Loader, name: &str, c: &ModelConfig) -> Result<Attention> {
        let (h, q, kv) = (c.hidden_dim, c.q_dim(), c.kv_dim());
        let names = [("q_proj", q), ("k_proj", kv), ("v_proj", kv)].map(|(n, out)| (format!("{name}.{n}"), out));
        let [q_proj, k_proj, v_proj]: [Linear; 3] =
            Linear::load_joined(l, &names, h, c.qkv_bias())?.try_into().ok().expect("three linears");
        Ok(Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj: Linear::load(l, &format!("{name}.o_proj"), q, h, c.o_bias())?,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim(),
            rope: c.rope(),
        })
    }

    /// x: [B*T, C] -> [B*T, C], through H heads of D (H·D need not be C). With a cache, keys and
    /// values of earlier positions are reused and the new ones appended; `pos` is the position
    /// of x's first token. `seed` turns the LoRA adapters' dropout on (training).
    pub fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        pos: usize,
        cache: Option<&mut KvCache>,
        seed: Option<u64>,
    ) -> Result<Tensor> {
        // The three projections as one matmul: [N, C] · [H + 2·Hkv heads of D, C]ᵀ. On the GPU
        // the weights lie one after another in the flat parameter buffer, so joining them is free.
        let (q, k, v) = (&self.q_proj.weight, &self.k_proj.weight, &self.v_proj.weight);
        let mut y = ops::matmul_t(x, &ops::concat(&[q, k, v], 0)?, false, true)?;
        // Their biases (when present: all three or none) joined the same way, added in one op.
        if let (Some(q), Some(k), Some(v)) = (&self.q_proj.bias, &self.k_proj.bias, &self.v_proj.bias) {
            y = ops::add(&y, &ops::concat(&[q, k, v], 0)?)?;
        }
        let y = add_deltas(y, x, &[&self.q_proj, &self.k_proj, &self.v_proj], seed)?;
        let y = y.view(&[b, t, self.heads + 2 * self.kv_heads, self.head_dim])?;
        let [q, k, v] = ops::rope_qkv(&y, self.heads, self.kv_heads, self.rope, pos)?;
        // With a cache, the new positions (a prompt, or tokens one at a time) attend causally to
        // every cached one, read in place.
        let o = match cache {
            Some(cache) => {
                let (k, v) = cache.append(k, v)?;
                ops::flash_attention_cached(&q, &k, &v, cache.len())?
            }
            None => ops::flash_attention_bthd(&q, &k, &v, true)?,
        };
        let o = o.view(&[b * t, self.heads * self.head_dim])?;
        self.o_proj.forward(&o, seed.map(|s| s.wrapping_add(4)))
    }
}

/// y + [Δ0 | Δ1 | ...]: the LoRA updates of projections whose outputs y joins (one matmul made
/// them), zeros for those without an adapter; y itself when none has one.
pub(super) fn add_deltas(y: Tensor, x: &Tensor, parts: &[&Linear], seed: Option<u64>) -> Result<Tensor> {
    if parts.iter().all(|p| p.lora.is_none()) {
        return Ok(y);
    }
    let n = x.shape()[0];
    let deltas = parts
        .iter()
        .enumerate()
        .map(|(i, p)| match p.delta(x, seed.map(|s| s.wrapping_add(i as u64 + 1)))? {
            Some(d) => Ok(d),
            None => Ok(Tensor::zeros_on(&[n, p.weight.shape()[0]], crate::Precision::FP32, x.device())),
        })
        .collect::<Result<Vec<_>>>()?;
    ops::add(&y, &ops::concat(&deltas.iter().collect::<Vec<_>>(), 1)?)
}
