//! Linear (no bias, weight [out, in] as in Hugging Face, an optional LoRA adapter) and RMSNorm.

use super::{Loader, Lora};
use crate::{ops, Result, Tensor};

#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn load(l: &mut Loader, name: &str, inp: usize, out: usize) -> Result<Linear> {
        let weight = l.param(&format!("{name}.weight"), &[out, inp])?;
        Ok(Linear { weight, lora: l.lora(name, inp, out)? })
    }

    // x: [N, in] -> [N, out]; `seed` turns the adapter's dropout on (training).
    pub fn forward(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let y = ops::matmul_t(x, &self.weight, false, true)?;
        match &self.lora {
            Some(lora) => ops::add(&y, &lora.delta(x, seed)?),
            None => Ok(y),
        }
    }

    /// The adapter's update of x ([N, in] -> [N, out]), or None without one.
    pub fn delta(&self, x: &Tensor, seed: Option<u64>) -> Result<Option<Tensor>> {
        self.lora.as_ref().map(|l| l.delta(x, seed)).transpose()
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
