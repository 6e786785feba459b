//! Linear (weight [out, in] as in Hugging Face, optional bias [out], optional LoRA adapter) and RMSNorm.

use super::{Loader, Lora};
use crate::{ops, Result, Tensor};

#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    /// `{name}.weight` [out, inp], and `{name}.bias` [out] when `bias`; a LoRA adapter when the
    /// loader's config names this layer.
    pub fn load(l: &mut Loader, name: &str, inp: usize, out: usize, bias: bool) -> Result<Linear> {
        let weight = l.param(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias { Some(l.param(&format!("{name}.bias"), &[out])?) } else { None };
        Ok(Linear { weight, bias, lora: l.lora(name, inp, out)? })
    }

    /// Linears that run as one matmul (q, k, v; gate, up), each of `names` [out, inp]: their
    /// weights are recorded first, then their biases, so on the GPU each set lies adjacent in
    /// the flat parameter buffer and joining them is free; then their adapters.
    pub fn load_joined(l: &mut Loader, names: &[(String, usize)], inp: usize, bias: bool) -> Result<Vec<Linear>> {
        let weights =
            names.iter().map(|(n, out)| l.param(&format!("{n}.weight"), &[*out, inp])).collect::<Result<Vec<_>>>()?;
        let mut biases = Vec::with_capacity(names.len());
        for (n, out) in names {
            biases.push(if bias { Some(l.param(&format!("{n}.bias"), &[*out])?) } else { None });
        }
        let mut linears = Vec::with_capacity(names.len());
        for ((weight, bias), (n, out)) in weights.into_iter().zip(biases).zip(names) {
            linears.push(Linear { weight, bias, lora: l.lora(n, inp, *out)? });
        }
        Ok(linears)
    }

    // x: [N, in] -> [N, out]; `seed` turns the adapter's dropout on (training).
    pub fn forward(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let mut y = ops::matmul_t(x, &self.weight, false, true)?;
        if let Some(b) = &self.bias {
            y = ops::add(&y, b)?;
        }
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
