//! Linear (no bias, weight [out, in] as in Hugging Face) and RMSNorm modules.

use super::Loader;
use crate::{ops, Result, Tensor};

#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
}

impl Linear {
    pub fn load(l: &mut Loader, name: &str, inp: usize, out: usize) -> Result<Linear> {
        Ok(Linear { weight: l.param(&format!("{name}.weight"), &[out, inp])? })
    }

    // x: [N, in] -> [N, out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::matmul_t(x, &self.weight, false, true)
    }
}

#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    pub fn load(l: &mut Loader, name: &str, dim: usize, eps: f32) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: l.param(&format!("{name}.weight"), &[dim])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rmsnorm(x, &self.weight, self.eps)
    }

    /// (h, norm(h)) for h = x + y: the residual add fused with this norm.
    pub fn add_forward(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        ops::add_rmsnorm(x, y, &self.weight, self.eps)
    }
}
