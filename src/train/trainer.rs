//! Trainer: forward, backward, clipping and the optimizer step, with gradient accumulation,
//! NaN/Inf protection, evaluation, and checkpoints that resume exactly.

use super::checkpoint::{load_tensors, save_tensors, sync_dir, write_atomic};
use super::{Decay, LrScheduler};
use crate::nn::{GPTModel, ModelConfig};
use crate::optim::{step_control, AdamW, AdamWConfig, Lion, LionConfig};
use crate::profile::{self, Phase};
use crate::{bail, no_grad, ops, Device, Error, Precision, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    Lion,
    AdamW,
}

/// The spec's fields, plus the optimizer, schedule, accumulation and checkpoint retention.
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
    /// Checkpoints kept in `checkpoint_dir` (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Seeds dropout and stochastic rounding.
    pub seed: u64,
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
        }
    }
}

enum Optimizer {
    Lion(Lion),
    AdamW(AdamW),
}

/// What a checkpoint records beside the tensors.
#[derive(Serialize, Deserialize)]
struct TrainerState {
    format: u32,
    step: usize,
    optimizer_steps: u64,
    skipped_steps: usize,
    data_position: u64,
    model_config: ModelConfig,
    train_config: TrainingConfig,
}

const FORMAT: u32 = 1;

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
    optimizer: Optimizer,
}

impl Trainer {
    /// A fresh model on the default device, and its optimizer.
    pub fn new(model_config: ModelConfig, train_config: TrainingConfig) -> Result<Trainer> {
        Trainer::new_on(model_config, train_config, Device::default_device())
    }

    pub fn new_on(mut model_config: ModelConfig, train_config: TrainingConfig, device: Device) -> Result<Trainer> {
        if train_config.use_bf16 || std::env::var("IRONTENSOR_BF16").is_ok_and(|v| v == "1") {
            model_config.precision = Precision::BF16;
        }
        let model = GPTModel::new_on(model_config, device, train_config.seed)?;
        Trainer::with_model(model, train_config)
    }

    /// Trains an existing model.
    pub fn with_model(model: GPTModel, config: TrainingConfig) -> Result<Trainer> {
        let c = &config;
        if c.grad_accum_steps == 0
            || c.learning_rate <= 0.0
            || !(0.0..1.0).contains(&c.beta1)
            || !(0.0..1.0).contains(&c.beta2)
        {
            bail!(
                Invalid,
                "training config: grad_accum_steps >= 1, learning_rate > 0 and betas in [0, 1) are required"
            );
        }
        let scheduler = LrScheduler {
            peak: c.learning_rate,
            min_lr: c.min_lr,
            warmup: c.warmup_steps,
            total: c.total_steps,
            decay: c.schedule,
        };
        let mut optimizer = match c.optimizer {
            OptimizerKind::Lion => Optimizer::Lion(Lion::new(LionConfig {
                lr: c.learning_rate,
                beta1: c.beta1,
                beta2: c.beta2,
                weight_decay: c.weight_decay,
                seed: c.seed,
            })),
            OptimizerKind::AdamW => Optimizer::AdamW(AdamW::new(AdamWConfig {
                lr: c.learning_rate,
                beta1: c.beta1,
                beta2: c.beta2,
                weight_decay: c.weight_decay,
                seed: c.seed,
                ..Default::default()
            })),
        };
        // Weight decay on matrices only: not on norms.
        let mask = model.parameters().iter().map(|(_, t)| t.rank() >= 2).collect();
        match &mut optimizer {
            Optimizer::Lion(o) => o.set_decay_mask(mask),
            Optimizer::AdamW(o) => o.set_decay_mask(mask),
        }
        Ok(Trainer { model, config, scheduler, step: 0, skipped_steps: 0, data_position: 0, optimizer })
    }

    fn tokens(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        Tensor::from_u32_on(ids, &[b, t], self.model.device())
    }

    /// One optimizer step on `inputs`/`targets` ([batch, seq] token ids, row-major):
    /// returns (mean loss, global gradient norm before clipping). A NaN/Inf loss or gradient
    /// skips the update and is counted in `skipped_steps`.
    pub fn train_step(&mut self, inputs: &[u32], targets: &[u32], batch: usize, seq_len: usize) -> Result<(f32, f32)> {
        let n = batch * seq_len;
        let accum = self.config.grad_accum_steps;
        if inputs.len() != n || targets.len() != n {
            bail!(
                Shape,
                "train_step: inputs and targets must hold batch×seq_len = {n} ids, got {} and {}",
                inputs.len(),
                targets.len()
            );
        }
        if !batch.is_multiple_of(accum) {
            bail!(Shape, "train_step: batch {batch} is not divisible by grad_accum_steps {accum}");
        }
        let micro = batch / accum;
        let params: Vec<Tensor> = self.model.parameters().iter().map(|(_, t)| t.clone()).collect();
        let mut grads: Option<Vec<Tensor>> = None;
        // The summed loss stays on the device: the step reads the host only once, at its end.
        let mut loss_sum: Option<Tensor> = None;
        for m in 0..accum {
            let range = m * micro * seq_len..(m + 1) * micro * seq_len;
            let x = self.tokens(&inputs[range.clone()], micro, seq_len)?;
            let y = self.tokens(&targets[range], micro, seq_len)?;
            let seed = self.config.seed ^ ((self.step as u64) << 20) ^ m as u64;
            let loss = {
                let _forward = profile::phase(Phase::Forward);
                let loss = self.model.loss(&x, &y, micro, seq_len, Some(seed))?;
                if accum == 1 {
                    loss // scaling by 1 would cost a dispatch each way and change nothing
                } else {
                    ops::scale(&loss, 1.0 / accum as f32)?
                }
            };
            let backward = profile::phase(Phase::Backward);
            let g = loss.backward()?;
            let g: Vec<Tensor> = params
                .iter()
                .map(|p| g.get(p).cloned().unwrap_or_else(|| Tensor::zeros_on(p.shape(), Precision::FP32, p.device())))
                .collect();
            no_grad(|| -> Result<()> {
                grads = Some(match grads.take() {
                    None => g,
                    Some(acc) => acc.iter().zip(&g).map(|(a, b)| ops::add(a, b)).collect::<Result<_>>()?,
                });
                loss_sum = Some(match loss_sum.take() {
                    None => loss.detach(),
                    Some(sum) => ops::add(&sum, &loss)?,
                });
                Ok(())
            })?;
            drop(backward);
        }
        let (grads, loss_sum) = (grads.expect("at least one micro-batch"), loss_sum.expect("at least one micro-batch"));
        let _optimizer = profile::phase(Phase::Optimizer);
        // Clipping and the NaN/Inf skip are decided on the device and applied inside the update.
        let control = step_control(&grads, &loss_sum, self.config.max_grad_norm)?;
        let lr = self.scheduler.get_lr(self.step);
        match &mut self.optimizer {
            Optimizer::Lion(o) => {
                o.set_lr(lr);
                o.step_controlled(&params, &grads, &control)?
            }
            Optimizer::AdamW(o) => {
                o.set_lr(lr);
                o.step_controlled(&params, &grads, &control)?
            }
        }
        let c = control.to_vec(); // the step's one host read
        let (applied, norm, loss_sum) = (c[1] != 0.0, c[2], c[3]);
        if !applied {
            match &mut self.optimizer {
                Optimizer::Lion(o) => o.uncount_step(),
                Optimizer::AdamW(o) => o.uncount_step(),
            }
            self.skipped_steps += 1;
            eprintln!("step {}: loss {loss_sum} / gradient norm {norm} is not finite; update skipped", self.step);
        }
        self.step += 1;
        profile::step();
        Ok((loss_sum, norm))
    }

    /// Mean loss over `batches` of ([batch·seq] inputs, targets), without dropout or gradients.
    pub fn evaluate(&self, batches: &[(Vec<u32>, Vec<u32>)], batch: usize, seq_len: usize) -> Result<f32> {
        if batches.is_empty() {
            bail!(Invalid, "evaluate: no batches");
        }
        no_grad(|| {
            let mut sum = 0.0;
            for (x, y) in batches {
                let (x, y) = (self.tokens(x, batch, seq_len)?, self.tokens(y, batch, seq_len)?);
                sum += self.model.loss(&x, &y, batch, seq_len, None)?.item()? as f64;
            }
            Ok((sum / batches.len() as f64) as f32)
        })
    }

    pub fn learning_rate(&self) -> f32 {
        self.scheduler.get_lr(self.step)
    }

    fn optimizer_state(&self) -> (&[Tensor], u64) {
        match &self.optimizer {
            Optimizer::Lion(o) => (o.state(), o.steps()),
            Optimizer::AdamW(o) => (o.state(), o.steps()),
        }
    }

    /// Writes a checkpoint directory at `path`: weights (HF layout), optimizer state, step,
    /// data position and both configs. The directory appears whole or not at all.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let tmp = path.with_extension("partial");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        self.model.save_pretrained(&tmp)?;
        let (state, optimizer_steps) = self.optimizer_state();
        let named: Vec<(String, Tensor)> =
            state.iter().enumerate().map(|(i, t)| (format!("state.{i}"), t.clone())).collect();
        save_tensors(&tmp.join("optimizer.safetensors"), &named)?;
        let meta = TrainerState {
            format: FORMAT,
            step: self.step,
            optimizer_steps,
            skipped_steps: self.skipped_steps,
            data_position: self.data_position,
            model_config: self.model.config.clone(),
            train_config: self.config.clone(),
        };
        write_atomic(&tmp.join("trainer.json"), &serde_json::to_vec_pretty(&meta).expect("serialises"))?;
        sync_dir(&tmp)?;
        // Replacing a checkpoint: the old one moves aside first, so one complete copy always exists.
        let old = path.with_extension("old");
        if path.exists() {
            fs::rename(path, &old)?;
        }
        fs::rename(&tmp, path)?;
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        sync_dir(path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
    }

    /// Saves `checkpoint_dir/step_NNNNNNNN` and deletes all but the newest `keep_checkpoints`.
    pub fn save_numbered(&self) -> Result<PathBuf> {
        let dir = Path::new(&self.config.checkpoint_dir);
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("step_{:08}", self.step));
        self.save_checkpoint(&path)?;
        let mut all = list_checkpoints(dir)?;
        while all.len() > self.config.keep_checkpoints.max(1) {
            fs::remove_dir_all(all.remove(0))?;
        }
        Ok(path)
    }

    /// Restores a trainer from `save_checkpoint`'s directory onto `device`.
    pub fn load_checkpoint(path: impl AsRef<Path>, device: Device) -> Result<Trainer> {
        let path = path.as_ref();
        let meta_path = path.join("trainer.json");
        let text = fs::read_to_string(&meta_path).map_err(|e| {
            Error::Invalid(format!("{} is not a checkpoint: cannot read trainer.json ({e})", path.display()))
        })?;
        let meta: TrainerState = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: corrupt trainer.json: {e}", meta_path.display())))?;
        if meta.format != FORMAT {
            bail!(Invalid, "{}: checkpoint format {} is not {FORMAT}", path.display(), meta.format);
        }
        let model = GPTModel::from_tensors(meta.model_config, load_tensors(&path.join("model.safetensors"), device)?)?;
        let mut trainer = Trainer::with_model(model, meta.train_config)?;
        let state = load_tensors(&path.join("optimizer.safetensors"), device)?;
        let state = (0..state.len())
            .map(|i| state.get(&format!("state.{i}")).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                Error::Invalid(format!("{}: optimizer.safetensors is missing state tensors", path.display()))
            })?;
        let params: Vec<Tensor> = trainer.model.parameters().iter().map(|(_, t)| t.clone()).collect();
        match &mut trainer.optimizer {
            Optimizer::Lion(o) => o.restore(&params, state, meta.optimizer_steps)?,
            Optimizer::AdamW(o) => o.restore(&params, state, meta.optimizer_steps)?,
        }
        trainer.step = meta.step;
        trainer.skipped_steps = meta.skipped_steps;
        trainer.data_position = meta.data_position;
        Ok(trainer)
    }

    /// The newest checkpoint in `dir`, if any.
    pub fn latest_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        Ok(list_checkpoints(dir.as_ref())?.pop())
    }
}

/// `step_*` directories in `dir`, oldest first (partial ones are ignored).
fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut all: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.extension().is_none()
                && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step_"))
        })
        .collect();
    all.sort();
    Ok(all)
}
