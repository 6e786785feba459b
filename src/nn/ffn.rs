//! SwiGLU feed-forward: down(silu(gate(x)) * up(x)).

use super::{Linear, Loader, ModelConfig};
use crate::{ops, Result, Tensor};

#[derive(Clone)]
pub struct FeedForward {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl FeedForward {
    pub fn load(l: &mut Loader, name: &str, c: &ModelConfig) -> Result<FeedForward> {
        let (h, f) = (c.hidden_dim, c.intermediate_dim);
        Ok(FeedForward {
            gate_proj: Linear::load(l, &format!("{name}.gate_proj"), h, f)?,
            up_proj: Linear::load(l, &format!("{name}.up_proj"), h, f)?,
            down_proj: Linear::load(l, &format!("{name}.down_proj"), f, h)?,
        })
    }

    // x: [N, C] -> [N, C]; `seed` turns the LoRA adapters' dropout on (training).
    pub fn forward(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        // gate and up as one matmul, [N, C] · [2F, C]ᵀ: on the GPU their weights lie one after
        // another in the flat parameter buffer, so joining them is free.
        let w = ops::concat(&[&self.gate_proj.weight, &self.up_proj.weight], 0)?;
        let y = ops::matmul_t(x, &w, false, true)?;
        let y = super::attention::add_deltas(y, x, &[&self.gate_proj, &self.up_proj], seed)?;
        let a = ops::swiglu_halves(&y)?;
        self.down_proj.forward(&a, seed.map(|s| s.wrapping_add(3)))
    }
}
