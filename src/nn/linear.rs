//! Linear (weight [out, in] as in Hugging Face, optional bias [out]) and RMSNorm modules.

use super::Loader;
use crate::{ops, Result, Tensor};

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `{name}.weight` [out, inp], and `{name}.bias` [out] when `bias`.
    pub fn load(l: &mut Loader, name: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        let weight = l.param(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias { Some(l.param(&format!("{name}.bias"), &[out])?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// Linears that run as one matmul (q, k, v; gate, up), each of `names` [out, inp]: their
    /// weights are recorded first, then their biases, so on the GPU each set lies adjacent in
    /// the flat parameter buffer and joining them is free.
    pub fn load_joined(l: &mut Loader, names: &[(String, usize)], inp: usize, bias: bool) -> Result<Vec<Linear>> {
        let weights =
            names.iter().map(|(n, out)| l.param(&format!("{n}.weight"), &[*out, inp])).collect::<Result<Vec<_>>>()?;
        let mut biases = Vec::with_capacity(names.len());
        for (n, out) in names {
            biases.push(if bias { Some(l.param(&format!("{n}.bias"), &[*out])?) } else { None });
        }
        Ok(weights.into_iter().zip(biases).map(|(weight, bias)| Linear { weight, bias }).collect())
    }

    // x: [N, in] -> [N, out]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::matmul_t(x, &self.weight, false, true)?;
        match &self.bias {
            Some(b) => ops::add(&y, b),
            None => Ok(y),
        }
    }
}

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
