//! SwiGLU feed-forward: down(silu(gate(x)) * up(x)).

use super::{Linear, Loader, ModelConfig};
use crate::{ops, Result, Tensor};

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

    // x: [N, C] -> [N, C]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = ops::swiglu(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&a)
    }
}
