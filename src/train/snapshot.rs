//! The trainer sent from rank 0 to the other MPI ranks: one safetensors buffer of weights,
//! optimizer state and metadata, so that every rank starts identical.

use super::checkpoint::{tensors_from_bytes, tensors_to_bytes};
use super::checkpoints::TrainerState;
use super::Trainer;
use crate::dist::Dist;
use crate::nn::GPTModel;
use crate::{bail, Device, Error, Result, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

impl Trainer {
    /// One trainer on every rank of `dist`: rank 0 makes it with `make` (fresh, or from a
    /// checkpoint: the rank count does not matter) and sends weights, optimizer state, step and
    /// configs to the others, so all start identical. An error on rank 0 reaches every rank.
    pub fn shared(dist: &Arc<Dist>, make: impl FnOnce() -> Result<Trainer>, device: Device) -> Result<Trainer> {
        let (mine, payload) = if dist.is_root() {
            let made = make();
            let payload = match &made {
                Ok(t) => t.snapshot().map(|bytes| [&[0u8][..], &bytes].concat()),
                Err(e) => Err(Error::Invalid(e.to_string())),
            };
            (Some(made), payload.unwrap_or_else(|e| [&[1u8][..], e.to_string().as_bytes()].concat()))
        } else {
            (None, Vec::new())
        };
        let got = dist.broadcast("sending the model from rank 0", payload)?;
        let mut trainer = match (mine, got.split_first()) {
            (Some(made), _) => made?,
            (None, Some((0, bytes))) => Trainer::from_snapshot(bytes, device)?,
            (None, Some((_, msg))) => {
                bail!(Invalid, "rank 0 could not set up training: {}", String::from_utf8_lossy(msg))
            }
            (None, None) => bail!(Invalid, "rank 0 sent no model"),
        };
        trainer.distribute(dist.clone())?;
        Ok(trainer)
    }

    /// Weights, optimizer state and metadata as one safetensors buffer (what `shared` sends).
    fn snapshot(&self) -> Result<Vec<u8>> {
        let mut named: Vec<(String, Tensor)> =
            self.model.parameters().iter().map(|(n, t)| (format!("model.{n}"), t.clone())).collect();
        named.extend(self.named_state());
        let meta = serde_json::to_string(&self.meta()).expect("serialises");
        tensors_to_bytes(&named, Some(HashMap::from([("trainer".to_string(), meta)])))
    }

    fn from_snapshot(bytes: &[u8], device: Device) -> Result<Trainer> {
        let (tensors, metadata) = tensors_from_bytes(bytes, device, "the model sent by rank 0")?;
        let meta: TrainerState = metadata
            .get("trainer")
            .and_then(|m| serde_json::from_str(m).ok())
            .ok_or_else(|| Error::Invalid("the model sent by rank 0 has no trainer state".into()))?;
        let (mut model, mut state) = (HashMap::new(), HashMap::new());
        for (name, t) in tensors {
            match name.strip_prefix("model.") {
                Some(n) => model.insert(n.to_string(), t),
                None => state.insert(name, t),
            };
        }
        let lora = meta.train_config.lora.clone();
        let model = GPTModel::from_tensors_with(meta.model_config.clone(), lora, model)?;
        Trainer::from_parts(meta, model, state, "the model sent by rank 0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ModelConfig;
    use crate::train::{OptimizerKind, TrainingConfig};
    use crate::Precision;

    /// adamw8bit's u32 codes, f32 scales and small parameters' f32 moments cross in the
    /// snapshot exactly, as another rank receives them.
    #[test]
    fn adamw8bit_state_survives_the_snapshot() {
        let model = ModelConfig {
            vocab_size: 128,
            hidden_dim: 64,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_dim: 128,
            max_seq_len: 16,
            precision: Precision::FP32,
            dropout: 0.0,
            ..ModelConfig::tiny()
        };
        let cfg = TrainingConfig { optimizer: OptimizerKind::AdamW8bit, ..Default::default() };
        let mut t = Trainer::new_on(model, cfg, Device::Cpu).unwrap();
        let x: Vec<u32> = (0..32).map(|i| (i * 37 + 5) % 128).collect();
        t.train_step(&x, &x, 2, 16).unwrap();
        let back = Trainer::from_snapshot(&t.snapshot().unwrap(), Device::Cpu).unwrap();
        let (a, b) = (t.optimizer.state(), back.optimizer.state());
        assert!(a.iter().any(|s| s.dtype() == Precision::U32) && a.len() == b.len());
        for (s, r) in a.iter().zip(b) {
            assert_eq!((s.dtype(), s.shape()), (r.dtype(), r.shape()));
            assert_eq!(s.raw_bytes(), r.raw_bytes());
        }
        assert_eq!(back.optimizer.steps(), 1);
    }
}
