//! What a training run is configured with: `TrainingConfig` and the optimizer it names.

use super::Decay;
use crate::nn::LoraConfig;
use crate::optim::{AdamW, AdamW8bit, AdamWConfig, Lion, LionConfig, Optimizer, Sophia, SophiaConfig};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Lion,
    AdamW,
    /// AdamW with block-wise 8-bit moments (`optim::AdamW8bit`).
    AdamW8bit,
    Sophia,
}

impl OptimizerKind {
    /// The value of a command-line flag (`flag` names it in the error): "adamw", "adamw8bit",
    /// "lion" or "sophia".
    pub fn parse(flag: &str, value: &str) -> Result<OptimizerKind> {
        match value {
            "adamw" => Ok(OptimizerKind::AdamW),
            "adamw8bit" => Ok(OptimizerKind::AdamW8bit),
            "lion" => Ok(OptimizerKind::Lion),
            "sophia" => Ok(OptimizerKind::Sophia),
            o => Err(Error::Invalid(format!("{flag} {o}: expected adamw, adamw8bit, lion or sophia"))),
        }
    }

    /// Bytes of optimizer state for `params` parameter elements: Lion's f32 momentum; AdamW's
    /// two f32 moments; Sophia's momentum and Hessian estimate; AdamW8bit's two 8-bit codes plus
    /// two f32 scales a block (its few small parameters' f32 moments left out).
    pub fn state_bytes(self, params: u64) -> u64 {
        match self {
            OptimizerKind::Lion => 4 * params,
            OptimizerKind::AdamW | OptimizerKind::Sophia => 8 * params,
            OptimizerKind::AdamW8bit => 2 * params + 8 * params.div_ceil(crate::optim::quant8::BLOCK as u64),
        }
    }

    /// The learning rate and betas `irontensor train` uses with this optimizer: Lion's tuned on
    /// the shakespeare preset; Sophia's the paper's GPT-2-small values (on the CPU shakespeare
    /// model, 150 steps: validation 5.93 at 6e-4, 5.89 at 2e-3, AdamW 5.52); AdamW keeps `c`'s.
    pub fn set_defaults(self, c: &mut TrainingConfig) {
        match self {
            OptimizerKind::AdamW | OptimizerKind::AdamW8bit => {}
            OptimizerKind::Lion => {
                c.learning_rate = 2e-4;
                (c.beta1, c.beta2) = (0.99, 0.9); // our names: interpolate with beta2 = 0.9, track with beta1 = 0.99 (see lion.rs)
            }
            OptimizerKind::Sophia => {
                c.learning_rate = SOPHIA_LR;
                (c.beta1, c.beta2) = (0.965, 0.99); // the paper's
            }
        }
    }

    /// The optimizer of this kind with `c`'s hyper-parameters.
    pub fn build(self, c: &TrainingConfig) -> Box<dyn Optimizer> {
        let adamw = AdamWConfig {
            lr: c.learning_rate,
            beta1: c.beta1,
            beta2: c.beta2,
            weight_decay: c.weight_decay,
            seed: c.seed,
            ..Default::default()
        };
        match self {
            OptimizerKind::Lion => Box::new(Lion::new(LionConfig {
                lr: c.learning_rate,
                beta1: c.beta1,
                beta2: c.beta2,
                weight_decay: c.weight_decay,
                seed: c.seed,
            })),
            OptimizerKind::AdamW => Box::new(AdamW::new(adamw)),
            OptimizerKind::AdamW8bit => Box::new(AdamW8bit::new(adamw)),
            OptimizerKind::Sophia => Box::new(Sophia::new(SophiaConfig {
                lr: c.learning_rate,
                beta1: c.beta1,
                beta2: c.beta2,
                rho: c.sophia_rho,
                weight_decay: c.weight_decay,
                interval: c.sophia_k as u64,
                seed: c.seed,
                ..Default::default()
            })),
        }
    }
}

/// Sophia's learning rate in `irontensor train` (the paper's for GPT-2 small).
const SOPHIA_LR: f32 = 6e-4;

/// Learning rate, weight decay, betas, clipping, schedule lengths and intervals, checkpoint
/// directory, BF16 weights, plus the optimizer, schedule, accumulation and checkpoint retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingConfig {
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f32,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub log_interval: usize,
    pub save_interval: usize,
    pub eval_interval: usize,
    pub checkpoint_dir: String,
    /// Store weights in BF16 (compute and gradients stay f32). `IRONTENSOR_BF16=1` turns it on.
    pub use_bf16: bool,
    /// Let the CPU prepare the next step while the GPU runs this one.
    pub async_gpu: bool,
    pub optimizer: OptimizerKind,
    pub schedule: Decay,
    pub min_lr: f32,
    /// Micro-batches per optimizer step: the batch given to `train_step` is split this many ways.
    pub grad_accum_steps: usize,
    /// Checkpoints kept in `checkpoint_dir` (older ones are deleted; damaged ones never are).
    pub keep_checkpoints: usize,
    /// Seeds dropout and stochastic rounding.
    pub seed: u64,
    /// Sophia's γ (its update is clip(m / max(γ·h, ε), 1)).
    #[serde(default = "sophia_rho")]
    pub sophia_rho: f32,
    /// Sophia's k: steps between Hessian estimates (each costs about one more step).
    #[serde(default = "sophia_k")]
    pub sophia_k: usize,
    /// Train LoRA adapters on these projections, the model's weights frozen (None: train all).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The model the LoRA adapters are on (`--init`): checkpoints then hold the adapters alone,
    /// and name it. None: they hold the frozen weights too.
    #[serde(default)]
    pub base_model: Option<String>,
    /// Keep only each transformer block's inputs in the forward pass and recompute the block
    /// in the backward pass: less activation memory for about one more forward per step.
    /// `Trainer::with_model` passes it to the model (`GPTModel::checkpoint_activations`).
    #[serde(default)]
    pub checkpoint_activations: bool,
}

fn sophia_rho() -> f32 {
    SophiaConfig::default().rho
}

fn sophia_k() -> usize {
    SophiaConfig::default().interval as usize
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            learning_rate: 3e-4,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            max_grad_norm: 1.0,
            warmup_steps: 50,
            total_steps: 1000,
            log_interval: 10,
            save_interval: 100,
            eval_interval: 50,
            checkpoint_dir: "checkpoints".to_string(),
            use_bf16: false,
            async_gpu: true,
            optimizer: OptimizerKind::Lion,
            schedule: Decay::Cosine,
            min_lr: 0.0,
            grad_accum_steps: 1,
            keep_checkpoints: 3,
            seed: 0,
            sophia_rho: sophia_rho(),
            sophia_k: sophia_k(),
            lora: None,
            base_model: None,
            checkpoint_activations: false,
        }
    }
}
