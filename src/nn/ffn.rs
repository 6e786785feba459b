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
        let (h, f, bias) = (c.hidden_dim, c.intermediate_dim, c.mlp_bias);
        let names = [format!("{name}.gate_proj"), format!("{name}.up_proj")].map(|n| (n, f));
        let [gate_proj, up_proj]: [Linear; 2] =
            Linear::load_joined(l, &names, h, bias)?.try_into().ok().expect("two linears");
        Ok(FeedForward { gate_proj, up_proj, down_proj: Linear::load(l, &format!("{name}.down_proj"), f, h, bias)? })
    }

    // x: [N, C] -> [N, C]; `seed` turns the LoRA adapters' dropout on (training).
    pub fn forward(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        // gate and up as one matmul, [N, C] · [2F, C]ᵀ: on the GPU their weights lie one after
        // another in the flat parameter buffer, so joining them is free.
        let w = ops::concat(&[&self.gate_proj.weight, &self.up_proj.weight], 0)?;
        let mut y = ops::matmul_t(x, &w, false, true)?;
        if let (Some(g), Some(u)) = (&self.gate_proj.bias, &self.up_proj.bias) {
            y = ops::add(&y, &ops::concat(&[g, u], 0)?)?;
        }
        let y = super::attention::add_deltas(y, x, &[&self.gate_proj, &self.up_proj], seed)?;
        let a = ops::swiglu_halves(&y)?;
        self.down_proj.forward(&a, seed.map(|s| s.wrapping_add(3)))
    }
}
