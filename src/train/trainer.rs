//! Trainer: forward, backward, clipping and the optimizer step, with gradient accumulation,
//! NaN/Inf protection, evaluation, and checkpoints that resume exactly.

use super::checkpoint::{load_tensors, save_tensors, tensors_from_bytes, tensors_to_bytes};
use super::{Decay, LrScheduler};
use crate::dist::{Dist, GradSync};
use crate::fs::{sync_dir, write_atomic};
use crate::nn::{GPTModel, ModelConfig};
use crate::ops::{self, flat};
use crate::optim::{step_control_scaled, AdamW, AdamWConfig, Lion, LionConfig};
use crate::profile::{self, Phase};
use crate::{bail, no_grad, Device, Error, Precision, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Store weights in BF16 (compute and gradients stay f32). The CLI sets it for `IRONTENSOR_BF16=1`.
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
    /// The loss scaling's state (absent from checkpoints written before it existed).
    #[serde(default)]
    loss_scale: LossScale,
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
    /// Gradient averaging across MPI ranks (`distribute`).
    sync: Option<GradSync>,
    /// Dynamic loss scaling, used while GPU matmuls round to f16 (`MatmulPrecision::F16`).
    loss_scale: LossScale,
}

/// PyTorch's GradScaler rule: start at 2^16, halve when the scaled gradients overflow (that step
/// is skipped), double after 1000 steps in a row without. Saved in checkpoints.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct LossScale {
    scale: f32,
    good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale { scale: 65536.0, good_steps: 0 }
    }
}

impl LossScale {
    /// The scale for this step: 1 unless GPU matmuls take f16 inputs, whose range the small
    /// gradients of a mean loss would fall below.
    fn now(&self, device: Device) -> f32 {
        let f16 = device == Device::Gpu && ops::matmul_precision() == ops::MatmulPrecision::F16;
        if f16 {
            self.scale
        } else {
            1.0
        }
    }

    fn update(&mut self, applied: bool) {
        if !applied {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps == 1000 {
                self.scale = (self.scale * 2.0).min(16_777_216.0);
                self.good_steps = 0;
            }
        }
    }
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
        })
    }

    /// Averages every step's gradients (and loss) over the ranks of `dist`: each rank then
    /// passes its own shard of the batch to `train_step`. All ranks must hold the same
    /// weights and state first (`Trainer::shared`).
    /// Gradients travel in buckets of `dist.bucket_bytes()` (`IRONTENSOR_DIST_BUCKET_MB`).
    pub fn distribute(&mut self, dist: Arc<Dist>) -> Result<()> {
        let bucket_bytes = dist.bucket_bytes();
        let params: Vec<Tensor> = self.model.parameters().iter().map(|(_, t)| t.clone()).collect();
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
        let scale = self.loss_scale.now(self.model.device());
        let params: Vec<Tensor> = self.model.parameters().iter().map(|(_, t)| t.clone()).collect();
        let mut grads: Option<Vec<Tensor>> = None;
        // The summed loss stays on the device: the step reads the host only once, at its end.
        let mut loss_sum: Option<Tensor> = None;
        for m in 0..accum {
            let range = m * micro * seq_len..(m + 1) * micro * seq_len;
            let x = self.tokens(&inputs[range.clone()], micro, seq_len)?;
            let y = self.tokens(&targets[range], micro, seq_len)?;
            // Ranks draw different dropout masks (rank 0 the same as a single process).
            let rank = self.dist().map_or(0, |d| d.rank() as u64);
            let seed = self.config.seed ^ ((self.step as u64) << 20) ^ m as u64 ^ (rank << 40);
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
            let last = m + 1 == accum;
            // The loss the backward pass starts from (the loss itself unless loss scaling is on).
            let scaled = if scale == 1.0 { loss.clone() } else { ops::scale(&loss, scale)? };
            if let (Some(sync), true) = (&self.sync, last) {
                // The last micro-batch: buckets are averaged across ranks while backward runs.
                let mut round = sync.round(grads.take());
                scaled.backward_with_hook(&mut |leaf, g| round.ready(leaf, g))?;
                let local = loss.item()? + loss_sum.take().map_or(Ok(0.0), |s| s.item())?;
                let (averaged, sums) = round.finish(vec![local])?;
                let mean = sums[0] / sync.dist().size() as f32;
                loss_sum = Some(Tensor::full_on(loss.shape(), mean, loss.device()));
                grads = Some(averaged);
                drop(backward);
                continue;
            }
            let g = scaled.backward()?;
            let g: Vec<Tensor> = params
                .iter()
                .map(|p| g.get(p).cloned().unwrap_or_else(|| Tensor::zeros_on(p.shape(), Precision::FP32, p.device())))
                .collect();
            let sum = match grads.take() {
                None => g,
                Some(acc) => no_grad(|| acc.iter().zip(&g).map(|(a, b)| ops::add(a, b)).collect::<Result<_>>())?,
            };
            // On the GPU the step's gradients go into one buffer, after the backward pass (whose
            // peak is earlier): the norm and the update are then one dispatch each.
            grads = Some(if last && self.model.device() == Device::Gpu { flat::pack(&sum)? } else { sum });
            loss_sum = Some(match loss_sum.take() {
                None => loss.detach(),
                Some(sum) => no_grad(|| ops::add(&sum, &loss))?,
            });
            drop(backward);
        }
        let (grads, loss_sum) = (grads.expect("at least one micro-batch"), loss_sum.expect("at least one micro-batch"));
        let _optimizer = profile::phase(Phase::Optimizer);
        // Clipping and the NaN/Inf skip are decided on the device and applied inside the update.
        let control = step_control_scaled(&grads, &loss_sum, self.config.max_grad_norm, scale)?;
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
        if scale != 1.0 {
            self.loss_scale.update(applied);
        }
        if !applied {
            match &mut self.optimizer {
                Optimizer::Lion(o) => o.uncount_step(),
                Optimizer::AdamW(o) => o.uncount_step(),
            }
            self.skipped_steps += 1;
            if self.dist().is_none_or(|d| d.is_root()) {
                let why = match scale != 1.0 && loss_sum.is_finite() {
                    true => format!(
                        "gradients overflowed at loss scale {scale}; the scale is now {}",
                        self.loss_scale.scale
                    ),
                    false => format!("loss {loss_sum} / gradient norm {norm} is not finite"),
                };
                eprintln!("step {}: {why}; update skipped", self.step);
            }
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

    fn meta(&self) -> TrainerState {
        TrainerState {
            format: FORMAT,
            step: self.step,
            optimizer_steps: self.optimizer_state().1,
            skipped_steps: self.skipped_steps,
            data_position: self.data_position,
            model_config: self.model.config.clone(),
            train_config: self.config.clone(),
            loss_scale: self.loss_scale,
        }
    }

    fn named_state(&self) -> Vec<(String, Tensor)> {
        self.optimizer_state().0.iter().enumerate().map(|(i, t)| (format!("state.{i}"), t.clone())).collect()
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
        save_tensors(&tmp.join("optimizer.safetensors"), &self.named_state())?;
        write_atomic(&tmp.join("trainer.json"), &serde_json::to_vec_pretty(&self.meta()).expect("serialises"))?;
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
        let path = self.numbered_path();
        self.save_checkpoint(&path)?;
        let mut all = list_checkpoints(dir)?;
        while all.len() > self.config.keep_checkpoints.max(1) {
            fs::remove_dir_all(all.remove(0))?;
        }
        Ok(path)
    }

    /// Where `save_numbered` puts the checkpoint of the current step.
    pub fn numbered_path(&self) -> PathBuf {
        Path::new(&self.config.checkpoint_dir).join(format!("step_{:08}", self.step))
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
        let model = load_tensors(&path.join("model.safetensors"), device)?;
        let state = load_tensors(&path.join("optimizer.safetensors"), device)?;
        Trainer::from_parts(meta, model, state, &path.display().to_string())
    }

    /// A trainer from its metadata, weights by name and optimizer state (`state.{i}`).
    fn from_parts(
        meta: TrainerState,
        model: HashMap<String, Tensor>,
        state: HashMap<String, Tensor>,
        source: &str,
    ) -> Result<Trainer> {
        let model = GPTModel::from_tensors(meta.model_config, model)?;
        let mut trainer = Trainer::with_model(model, meta.train_config)?;
        let state = (0..state.len())
            .map(|i| state.get(&format!("state.{i}")).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Invalid(format!("{source}: the optimizer state is missing tensors")))?;
        let params: Vec<Tensor> = trainer.model.parameters().iter().map(|(_, t)| t.clone()).collect();
        match &mut trainer.optimizer {
            Optimizer::Lion(o) => o.restore(&params, state, meta.optimizer_steps)?,
            Optimizer::AdamW(o) => o.restore(&params, state, meta.optimizer_steps)?,
        }
        trainer.step = meta.step;
        trainer.skipped_steps = meta.skipped_steps;
        trainer.data_position = meta.data_position;
        trainer.loss_scale = meta.loss_scale;
        Ok(trainer)
    }

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
        Trainer::from_parts(meta, model, state, "the model sent by rank 0")
    }

    /// A hash of the weights, to check that ranks still agree.
    pub fn weights_fingerprint(&self) -> Vec<u8> {
        let mut h = Vec::new();
        for (_, t) in self.model.parameters() {
            h.extend(crate::dist::fingerprint(&t.raw_bytes()).to_le_bytes());
        }
        h
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
