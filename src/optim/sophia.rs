//! Sophia-G (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer"): a
//! momentum step divided by an EMA of a diagonal Hessian estimate, clipped per coordinate.

use super::{Rule, Settings, Stateful, UpdateRule};

/// Sophia hyper-parameters. The defaults are the paper's (β1 0.965, β2 0.99, γ 0.01,
/// ε 1e-15, k 10, weight decay 0.1) with lr 3e-4, the middle of its GPT-2 range.
#[derive(Clone, Copy, Debug)]
pub struct SophiaConfig {
    pub lr: f32,
    /// EMA of the gradients (m).
    pub beta1: f32,
    /// EMA of the Hessian estimates (h), folded in every `interval` steps.
    pub beta2: f32,
    /// γ: the update is clip(m / max(γ·h, ε), 1).
    pub rho: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// k: steps between Hessian estimates (the first at step 1, then 1 + k, ...).
    pub interval: u64,
    /// Seed of the stochastic rounding of BF16 parameters.
    pub seed: u64,
}

impl Default for SophiaConfig {
    fn default() -> Self {
        SophiaConfig {
            lr: 3e-4,
            beta1: 0.965,
            beta2: 0.99,
            rho: 0.01,
            eps: 1e-15,
            weight_decay: 0.1,
            interval: 10,
            seed: 0,
        }
    }
}

/// Sophia-G with f32 (m, h) per parameter element, interleaved in its state. At step t:
/// ```text
/// if (t - 1) mod k == 0:  h = β2·h + (1 - β2)·B·ĝ²      (`Optimizer::update_hessian`)
/// m = β1·m + (1 - β1)·g
/// w = w - lr·wd·w
/// w = w - lr · clip(m / max(γ·h, ε), 1)                 (clip: each coordinate to [-1, 1])
/// ```
/// ĝ is the gradient of the mean loss over B tokens whose labels were sampled from the
/// model's own softmax (the Gauss-Newton-Bartlett estimator); the trainer computes it.
/// Until the first estimate h is 0 and the step is lr·sign(m).
pub type Sophia = Stateful<SophiaConfig>;

impl UpdateRule for SophiaConfig {
    const NAME: &'static str = "sophia";
    const WIDTH: usize = 2;

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn settings(&self, _t: u64) -> Settings {
        Settings {
            rule: Rule::Sophia { beta1: self.beta1, rho: self.rho, eps: self.eps },
            lr: self.lr,
            weight_decay: self.weight_decay,
            seed: self.seed,
        }
    }

    fn wants_hessian(&self, t: u64) -> bool {
        self.interval > 0 && (t - 1).is_multiple_of(self.interval)
    }

    fn hessian_settings(&self, tokens: f32) -> Option<Settings> {
        Some(Settings {
            rule: Rule::SophiaHessian { beta2: self.beta2, tokens },
            lr: 0.0,
            weight_decay: 0.0,
            seed: self.seed,
        })
    }
}
