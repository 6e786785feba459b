//! Causal self-attention with RoPE and grouped-query heads, through FlashAttention.

use super::{KvCache, Linear, Loader, ModelConfig};
use crate::{ops, Result, Tensor};

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rope_base: f32,
}

impl Attention {
    pub fn load(l: &mut Loader, name: &str, c: &ModelConfig) -> Result<Attention> {
        let (h, d) = (c.hidden_dim, c.head_dim());
        let kv = c.num_kv_heads * d;
        Ok(Attention {
            q_proj: Linear::load(l, &format!("{name}.q_proj"), h, h)?,
            k_proj: Linear::load(l, &format!("{name}.k_proj"), h, kv)?,
            v_proj: Linear::load(l, &format!("{name}.v_proj"), h, kv)?,
            o_proj: Linear::load(l, &format!("{name}.o_proj"), h, h)?,
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: d,
            rope_base: c.rope_base,
        })
    }

    /// x: [B*T, C] -> [B*T, C]. With a cache, keys and values of earlier positions are reused
    /// and the new ones appended; `pos` is the position of x's first token.
    pub fn forward(&self, x: &Tensor, b: usize, t: usize, pos: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let d = self.head_dim;
        // [B*T, H*D] -> [B, T, H, D], rotated for q and k: attention reads that layout as it is.
        let heads = |y: Tensor, h: usize, rotate: bool| -> Result<Tensor> {
            let y = y.view(&[b, t, h, d])?;
            if rotate {
                ops::rope(&y, self.rope_base, pos)
            } else {
                Ok(y)
            }
        };
        let q = heads(self.q_proj.forward(x)?, self.heads, true)?;
        let mut k = heads(self.k_proj.forward(x)?, self.kv_heads, true)?;
        let mut v = heads(self.v_proj.forward(x)?, self.kv_heads, false)?;
        if let Some(cache) = cache {
            (k, v) = cache.append(k, v)?;
        }
        // A prompt attends causally; one new token after it attends to every cached key.
        let o = match (k.shape()[1] == t, t) {
            (true, _) => ops::flash_attention_bthd(&q, &k, &v, true)?,
            (false, 1) => ops::flash_attention_bthd(&q, &k, &v, false)?,
            _ => crate::bail!(
                Invalid,
                "attention: with a KV cache, feed the prompt at once and then one token at a time"
            ),
        };
        let o = o.view(&[b * t, self.heads * d])?;
        self.o_proj.forward(&o)
    }
}
