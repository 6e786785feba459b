//! Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is
//! sign(β2·m + (1-β2)·g), the momentum m = β1·m + (1-β1)·g (β names as in IronTensor's API).

use super::{Rule, Settings, Stateful, UpdateRule};

/// Lion hyper-parameters. The defaults are IronTensor's documented training configuration
/// (lr 3e-4, β1 0.9, β2 0.99, weight decay 0.1).
#[derive(Clone, Copy, Debug)]
pub struct LionConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
    /// Seed of the stochastic rounding of BF16 parameters.
    pub seed: u64,
}

impl Default for LionConfig {
    fn default() -> Self {
        LionConfig { lr: 3e-4, beta1: 0.9, beta2: 0.99, weight_decay: 0.1, seed: 0 }
    }
}

/// Lion, one f32 momentum per parameter element. Per element:
/// ```text
/// update = sign(β2·m + (1 - β2)·g)
/// m      = β1·m + (1 - β1)·g
/// w      = w - lr·update - lr·wd·w
/// ```
/// Note: the paper (Algorithm 2) names the betas the other way round: it interpolates with
/// β1 (c = β1·m + (1-β1)·g) and tracks the momentum with β2 (m = β2·m + (1-β2)·g), with
/// defaults β1 = 0.9, β2 = 0.99. With our names the paper's behaviour needs
/// beta1 = 0.99, beta2 = 0.9; our defaults (0.9, 0.99) give the swapped variant.
/// Weight decay is decoupled and uses the weight before the step, as in the paper.
/// Its state (`Optimizer::state`) is the momentum: one f32 per element.
pub type Lion = Stateful<LionConfig>;

impl UpdateRule for LionConfig {
    const NAME: &'static str = "lion";
    const WIDTH: usize = 1;

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn settings(&self, _t: u64) -> Settings {
        Settings {
            rule: Rule::Lion { beta1: self.beta1, beta2: self.beta2 },
            lr: self.lr,
            weight_decay: self.weight_decay,
            seed: self.seed,
        }
    }
}
