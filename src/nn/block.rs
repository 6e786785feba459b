//! TransformerBlock: pre-norm attention and SwiGLU FFN, each on a residual branch.

use super::{Attention, FeedForward, KvCache, Loader, ModelConfig, RmsNorm};
use crate::{ops, Result, Tensor};

#[derive(Clone)]
pub struct TransformerBlock {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: FeedForward,
}

impl TransformerBlock {
    /// `name` is the Hugging Face prefix, `model.layers.{i}`.
    pub fn load(l: &mut Loader, name: &str, c: &ModelConfig) -> Result<TransformerBlock> {
        Ok(TransformerBlock {
            input_layernorm: RmsNorm::load(l, &format!("{name}.input_layernorm"), c.hidden_dim, c.norm_eps)?,
            self_attn: Attention::load(l, &format!("{name}.self_attn"), c)?,
            post_attention_layernorm: RmsNorm::load(
                l,
                &format!("{name}.post_attention_layernorm"),
                c.hidden_dim,
                c.norm_eps,
            )?,
            mlp: FeedForward::load(l, &format!("{name}.mlp"), c)?,
        })
    }

    /// x: [B*T, C] -> [B*T, C]. `dropout` is (p, seed) while training (p may be 0: the seed
    /// also draws the LoRA adapters' dropout).
    pub fn forward(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        pos: usize,
        cache: Option<&mut KvCache>,
        dropout: Option<(f32, u64)>,
    ) -> Result<Tensor> {
        let (x, m) = self.forward_residual(x, None, b, t, pos, cache, dropout)?;
        ops::add(&x, &m)
    }

    /// The block on the residual stream x + `pending` (a branch output not yet added), giving
    /// the next (x, pending): each residual add is left to the norm after it, which fuses it.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_residual(
        &self,
        x: &Tensor,
        pending: Option<&Tensor>,
        b: usize,
        t: usize,
        pos: usize,
        cache: Option<&mut KvCache>,
        dropout: Option<(f32, u64)>,
    ) -> Result<(Tensor, Tensor)> {
        let drop = |y: Tensor, salt: u64| match dropout {
            Some((p, seed)) if p > 0.0 => ops::dropout(&y, p, seed.wrapping_add(salt)),
            _ => Ok(y),
        };
        let seed = |salt: u64| dropout.map(|(_, s)| s.wrapping_add(salt));
        let (x, n) = match pending {
            Some(p) => self.input_layernorm.add_forward(x, p)?,
            None => (x.clone(), self.input_layernorm.forward(x)?),
        };
        let a = drop(self.self_attn.forward(&n, b, t, pos, cache, seed(10))?, 1)?;
        let (x, n) = self.post_attention_layernorm.add_forward(&x, &a)?;
        let m = drop(self.mlp.forward(&n, seed(20))?, 2)?;
        Ok((x, m))
    }
}
