//! What a training run holds in device memory, worked out before it starts: `irontensor train`
//! prints it against what the device has and stops, saying what to change, when it cannot fit.

use super::{OptimizerKind, TrainingConfig};
use crate::nn::ModelConfig;
use crate::Precision;

/// Gradients up to this size are packed into one buffer after the backward pass (the trainer
/// packs them when the GPU's binding limit holds them: 2 GiB on NVIDIA and Apple GPUs).
const PACKED_MAX: u64 = 1 << 31;

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
        let (q, kv) = (model.q_dim() as u64, model.kv_dim() as u64);
        let tokens = (batch / train.grad_accum_steps.max(1) * seq) as u64;
        // Per layer and token: the residual stream and the two norms' inputs and outputs, q and
        // o's input, the attention output, the feed-forward's gate, up and product, k and v before
        // and after RoPE. Then the output: the hidden states and their gradient, which the fused
        // cross-entropy holds from forward to backward, and its chunk of logits (about 2^23).
        let (pc, pf, pkv) = PER_TOKEN_LAYER;
        // Three of the pc are as wide as the queries (q, the attention output, o's input).
        let block = tokens * ((pc - 3) * c + 3 * q + pf * f + pkv * kv);
        // Checkpointed, a block keeps only its input (x and the pending branch, 2·C a token)
        // and one block's activations exist at a time, while the backward recomputes it.
        let layers = match train.checkpoint_activations {
            true => model.num_layers as u64 * tokens * 2 * c + block,
            false => model.num_layers as u64 * block,
        };
        let output = 3 * tokens * c + (1 << 23).min(tokens * v);
        // A BF16 output weight is widened to f32 for the cross-entropy.
        let widened = if stored == 2 { v * c } else { 0 };
        // Sophia's Hessian estimate makes a micro-batch's full logits, outside the backward.
        let sampled = if train.optimizer == OptimizerKind::Sophia { tokens * v } else { 0 };
        // LoRA: gradients and state for the adapters alone (f32, beside the frozen weights).
        let trained = train.lora.as_ref().map_or(params, |l| l.num_params(model) as u64);
        let adapters = if train.lora.is_some() { trained * 4 } else { 0 };
        MemoryPlan {
            weights: params * stored + adapters,
            gradients: trained * 4,
            optimizer: train.optimizer.state_bytes(trained),
            activations: 4 * (layers + output + widened).max(sampled),
        }
    }

    /// The peak: weights and state throughout; the activations until the backward has used
    /// them, while the gradients build up; then, for gradients that one GPU binding holds (up to
    /// `PACKED_MAX`, the limit on NVIDIA and Apple GPUs), the gradients twice, as they are packed
    /// into one buffer for the optimizer.
    pub fn total(&self) -> u64 {
        let packing = if self.gradients <= PACKED_MAX { self.gradients } else { 0 };
        self.weights + self.optimizer + self.gradients + self.activations.max(packing)
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
