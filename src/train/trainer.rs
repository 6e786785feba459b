//! Trainer: the model, its optimizer and schedule, and the counters a checkpoint restores.
//! The step is in step.rs, checkpoints in checkpoints.rs, the MPI snapshot in snapshot.rs.

use super::{LossScale, LrScheduler, OptimizerKind, TrainingConfig};
use crate::dist::{Dist, GradSync};
use crate::nn::{GPTModel, ModelConfig};
use crate::optim::Optimizer;
use crate::{bail, Device, Precision, Result, Tensor};
use std::path::PathBuf;
use std::sync::Arc;

pub struct Trainer {
    pub model: GPTModel,
    pub config: TrainingConfig,
    pub scheduler: LrScheduler,
    /// Optimizer steps taken (skipped NaN steps included).
    pub step: usize,
    /// Steps whose loss or gradient was NaN/Inf: no update was made.
    pub skipped_steps: usize,
    /// Where the caller's data stream is; saved and restored with the checkpoint.
    pub data_position: u64,
    pub(super) optimizer: Box<dyn Optimizer>,
    /// Gradient averaging across MPI ranks (`distribute`).
    pub(super) sync: Option<GradSync>,
    /// Dynamic loss scaling, used while GPU matmuls round to f16 (`MatmulPrecision::F16`).
    pub(super) loss_scale: LossScale,
    /// Checkpoints found damaged when this trainer was loaded: never deleted or overwritten.
    pub damaged: Vec<PathBuf>,
}

impl Trainer {
    /// A fresh model on the default device, and its optimizer.
    pub fn new(model_config: ModelConfig, train_config: TrainingConfig) -> Result<Trainer> {
        Trainer::new_on(model_config, train_config, Device::default_device())
    }

    pub fn new_on(mut model_config: ModelConfig, train_config: TrainingConfig, device: Device) -> Result<Trainer> {
        if train_config.use_bf16 {
            model_config.precision = Precision::BF16;
        }
        let model = GPTModel::new_on(model_config, device, train_config.seed)?;
        Trainer::with_model(model, train_config)
    }

    /// Trains an existing model (with new LoRA adapters on it when `config.lora` asks for them).
    pub fn with_model(model: GPTModel, config: TrainingConfig) -> Result<Trainer> {
        let model = match (&config.lora, &model.lora) {
            (Some(lora), None) => model.with_lora(lora.clone(), config.seed)?,
            (Some(want), Some(have)) if want != have => {
                bail!(
                    Invalid,
                    "training config: the model's LoRA adapters ({have:?}) are not the ones asked for ({want:?})"
                )
            }
            (None, Some(_)) => bail!(Invalid, "training config: the model has LoRA adapters but the config names none"),
            _ => model,
        };
        let mut model = model;
        model.checkpoint_activations = config.checkpoint_activations;
        let c = &config;
        let lr_ok = c.learning_rate.is_finite() && c.learning_rate > 0.0;
        if c.grad_accum_steps == 0 || !lr_ok || !(0.0..1.0).contains(&c.beta1) || !(0.0..1.0).contains(&c.beta2) {
            bail!(
                Invalid,
                "training config: grad_accum_steps >= 1, a finite learning_rate > 0 and betas in [0, 1) are required"
            );
        }
        if c.optimizer == OptimizerKind::Sophia
            && (c.sophia_k == 0 || !(c.sophia_rho.is_finite() && c.sophia_rho > 0.0))
        {
            bail!(Invalid, "training config: sophia needs sophia_k >= 1 and a finite sophia_rho > 0");
        }
        let scheduler = LrScheduler {
            peak: c.learning_rate,
            min_lr: c.min_lr,
            warmup: c.warmup_steps,
            total: c.total_steps,
            decay: c.schedule,
        };
        let mut optimizer = c.optimizer.build(c);
        // Weight decay on matrices only: not on norms or biases.
        optimizer.set_decay_mask(model.trainable().iter().map(|(_, t)| t.rank() >= 2).collect());
        Ok(Trainer {
            model,
            config,
            scheduler,
            step: 0,
            skipped_steps: 0,
            data_position: 0,
            optimizer,
            sync: None,
            loss_scale: LossScale::default(),
            damaged: Vec::new(),
        })
    }

    /// Averages every step's gradients (and loss) over the ranks of `dist`: each rank then
    /// passes its own shard of the batch to `train_step`. All ranks must hold the same
    /// weights and state first (`Trainer::shared`).
    pub fn distribute(&mut self, dist: Arc<Dist>) -> Result<()> {
        let (params, bucket_bytes) = (self.params(), dist.bucket_bytes());
        self.sync = Some(GradSync::new(dist, &params, bucket_bytes));
        Ok(())
    }

    /// The MPI job this trainer is part of, if any.
    pub fn dist(&self) -> Option<&Arc<Dist>> {
        self.sync.as_ref().map(|s| s.dist())
    }

    /// The gradient buckets: (how many, f32 values all-reduced per step), when distributed.
    pub fn all_reduce_plan(&self) -> Option<(usize, usize)> {
        self.sync.as_ref().map(|s| (s.num_buckets(), s.values_per_step()))
    }

    pub fn learning_rate(&self) -> f32 {
        self.scheduler.get_lr(self.step)
    }

    /// The optimizer's name: "lion", "adamw", "adamw8bit" or "sophia".
    pub fn optimizer_name(&self) -> &'static str {
        self.optimizer.name()
    }

    /// The parameters that train (LoRA: the adapters alone), in the order the optimizer's
    /// state follows.
    pub(super) fn params(&self) -> Vec<Tensor> {
        self.model.trainable().into_iter().map(|(_, t)| t).collect()
    }

    /// A hash of the weights, to check that ranks still agree.
    pub fn weights_fingerprint(&self) -> Vec<u8> {
        let mut h = Vec::new();
        for (_, t) in self.model.parameters() {
            h.extend(crate::dist::fingerprint(&t.raw_bytes()).to_le_bytes());
        }
        h
    }
}
