//! What a training run holds in device memory, worked out before it starts: `irontensor train`
//! prints it against what the device has and stops, saying what to change, when it cannot fit.

use super::{OptimizerKind, TrainingConfig};
use crate::nn::ModelConfig;
use crate::Precision;

/// Bytes of each part of a training step's peak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Parameters as stored (4 bytes each, 2 in BF16).
    pub weights: u64,
    /// f32 gradients, in one flat set of buffers for the optimizer.
    pub gradients: u64,
    /// Optimizer state: AdamW's two f32 moments, Lion's one, AdamW8bit's ~2 bytes an element.
    pub optimizer: u64,
    /// Tensors the forward keeps for the backward, at the micro-batch's tokens.
    pub activations: u64,
}

/// f32 values kept for the backward per token and layer, in units of the hidden width C, the
/// feed-forward width F and the key/value width KV (see `MemoryPlan::new`).
const PER_TOKEN_LAYER: (u64, u64, u64) = (8, 3, 3);

impl MemoryPlan {
    /// The plan for `model` trained by `train` on `batch` sequences of `seq` tokens (split into
    /// `train.grad_accum_steps` micro-batches).
    pub fn new(model: &ModelConfig, train: &TrainingConfig, batch: usize, seq: usize) -> MemoryPlan {
        let params = model.num_params() as u64;
        let stored = if train.use_bf16 || model.precision == Precision::BF16 { 2 } else { 4 };
        let (c, f, v) = (model.hidden_dim as u64, model.intermediate_dim as u64, model.vocab_size as u64);
        let kv = (model.num_kv_heads * model.head_dim()) as u64;
        let tokens = (batch / train.grad_accum_steps.max(1) * seq) as u64;
        // Per layer and token: the residual stream and the two norms' inputs and outputs, q and
        // o's input, the attention output, the feed-forward's gate, up and product, k and v before
        // and after RoPE. Then the output: the hidden states and their gradient, which the fused
        // cross-entropy holds from forward to backward, and its chunk of logits (about 2^23).
        let (pc, pf, pkv) = PER_TOKEN_LAYER;
        let layers = model.num_layers as u64 * tokens * (pc * c + pf * f + pkv * kv);
        let output = 3 * tokens * c + (1 << 23).min(tokens * v);
        // A BF16 output weight is widened to f32 for the cross-entropy.
        let widened = if stored == 2 { v * c } else { 0 };
        // Sophia's Hessian estimate makes a micro-batch's full logits, outside the backward.
        let sampled = if train.optimizer == OptimizerKind::Sophia { tokens * v } else { 0 };
        MemoryPlan {
            weights: params * stored,
            gradients: params * 4,
            optimizer: train.optimizer.state_bytes(params),
            activations: 4 * (layers + output + widened).max(sampled),
        }
    }

    /// The peak: weights and state throughout; the activations until the backward has used
    /// them, while the gradients build up; then the gradients twice, as they are packed into
    /// the optimizer's flat buffers.
    pub fn total(&self) -> u64 {
        self.weights + self.optimizer + self.gradients + self.activations.max(self.gradients)
    }

    /// One line: each part, and the peak.
    pub fn describe(&self) -> String {
        format!(
            "weights {}, gradients {}, optimizer state {}, activations {}: a peak of {}",
            gb(self.weights),
            gb(self.gradients),
            gb(self.optimizer),
            gb(self.activations),
            gb(self.total())
        )
    }
}

/// Bytes as GB with two decimals.
pub fn gb(bytes: u64) -> String {
    format!("{:.2} GB", bytes as f64 / 1e9)
}
