//! AdamW (Loshchilov & Hutter) with PyTorch's semantics: w -= lr·wd·w, then the
//! bias-corrected Adam step.

use super::{Rule, Settings, Stateful, UpdateRule};

/// AdamW hyper-parameters; the defaults are PyTorch's.
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Seed of the stochastic rounding of BF16 parameters.
    pub seed: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, seed: 0 }
    }
}

/// AdamW with f32 first and second moments per parameter element. At step t:
/// ```text
/// w = w - lr·wd·w
/// m = β1·m + (1 - β1)·g;   v = β2·v + (1 - β2)·g²
/// w = w - lr · (m / (1 - β1^t)) / (sqrt(v) / sqrt(1 - β2^t) + eps)
/// ```
/// Its state (`Optimizer::state`) is (m, v) interleaved per element.
pub type AdamW = Stateful<AdamWConfig>;

impl UpdateRule for AdamWConfig {
    const NAME: &'static str = "adamw";
    const WIDTH: usize = 2;

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn settings(&self, t: u64) -> Settings {
        Settings {
            rule: Rule::AdamW {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                bc1: (1.0 - (self.beta1 as f64).powf(t as f64)) as f32,
                bc2_sqrt: (1.0 - (self.beta2 as f64).powf(t as f64)).sqrt() as f32,
            },
            lr: self.lr,
            weight_decay: self.weight_decay,
            seed: self.seed,
        }
    }
}
