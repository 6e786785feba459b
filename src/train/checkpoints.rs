//! A trainer's checkpoint directories: save, load, the numbered ones of a run with their
//! retention, and resuming from the newest one that loads when newer ones are damaged.

use super::checkpoint::{load_tensors, save_tensors};
use super::{LossScale, Trainer, TrainingConfig};
use crate::fs::{sync_dir, write_atomic};
use crate::nn::{GPTModel, ModelConfig};
use crate::{bail, Device, Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What a checkpoint records beside the tensors.
#[derive(Serialize, Deserialize)]
pub(super) struct TrainerState {
    format: u32,
    step: usize,
    optimizer_steps: u64,
    skipped_steps: usize,
    data_position: u64,
    pub(super) model_config: ModelConfig,
    pub(super) train_config: TrainingConfig,
    /// The loss scaling's state (absent from checkpoints written before it existed).
    #[serde(default)]
    loss_scale: LossScale,
}

const FORMAT: u32 = 1;

/// Where a damaged checkpoint is moved when a new one of the same step is saved.
const DAMAGED: &str = "damaged";

impl Trainer {
    pub(super) fn meta(&self) -> TrainerState {
        TrainerState {
            format: FORMAT,
            step: self.step,
            optimizer_steps: self.optimizer.steps(),
            skipped_steps: self.skipped_steps,
            data_position: self.data_position,
            model_config: self.model.config.clone(),
            train_config: self.config.clone(),
            loss_scale: self.loss_scale,
        }
    }

    pub(super) fn named_state(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state().iter().enumerate().map(|(i, t)| (format!("state.{i}"), t.clone())).collect()
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
        // LoRA on a base model that stays where it is: the adapters alone, naming it.
        if self.model.lora.is_none() || self.config.base_model.is_none() {
            self.model.save_pretrained(&tmp)?;
        }
        if self.model.lora.is_some() {
            self.model.save_adapter(&tmp, self.config.base_model.as_deref().unwrap_or("."))?;
        }
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

    /// Saves `checkpoint_dir/step_NNNNNNNN` and deletes all but the newest `keep_checkpoints`
    /// of the others. Damaged checkpoints (`self.damaged`) are neither counted nor deleted;
    /// one in the way of the new checkpoint is moved aside to `step_NNNNNNNN.damaged`.
    pub fn save_numbered(&self) -> Result<PathBuf> {
        let dir = Path::new(&self.config.checkpoint_dir);
        fs::create_dir_all(dir)?;
        let path = self.numbered_path();
        if self.damaged.contains(&path) && path.exists() {
            let aside = path.with_extension(DAMAGED);
            if aside.exists() {
                bail!(
                    Invalid,
                    "{}: cannot move the damaged checkpoint aside: {} exists",
                    path.display(),
                    aside.display()
                );
            }
            fs::rename(&path, &aside)?;
            eprintln!("moved the damaged checkpoint {} aside to {}", path.display(), aside.display());
        }
        self.save_checkpoint(&path)?;
        // A damaged one still in place is left out; once moved aside, its path holds a good one.
        let in_place = |p: &PathBuf| self.damaged.contains(p) && !p.with_extension(DAMAGED).exists();
        let mut kept: Vec<PathBuf> = list_checkpoints(dir)?.into_iter().filter(|p| !in_place(p)).collect();
        while kept.len() > self.config.keep_checkpoints.max(1) {
            fs::remove_dir_all(kept.remove(0))?;
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
        let model = match &meta.train_config.lora {
            None => {
                check_config_json(path)?;
                GPTModel::from_tensors(
                    meta.model_config.clone(),
                    load_tensors(&path.join("model.safetensors"), device)?,
                )?
            }
            Some(_) => lora_model(path, &meta, device)?,
        };
        let state = load_tensors(&path.join("optimizer.safetensors"), device)?;
        Trainer::from_parts(meta, model, state, &path.display().to_string())
    }

    /// The newest checkpoint in `dir` that loads fully, if any. Each newer one that does not
    /// is reported on stderr (which and why), left in place and listed in `damaged`.
    /// An error when checkpoints exist but none loads.
    pub fn load_latest(dir: impl AsRef<Path>, device: Device) -> Result<Option<(PathBuf, Trainer)>> {
        let (mut damaged, mut reasons) = (Vec::new(), Vec::new());
        for path in list_checkpoints(dir.as_ref())?.into_iter().rev() {
            match Trainer::load_checkpoint(&path, device) {
                Ok(mut t) => {
                    t.damaged = damaged;
                    return Ok(Some((path, t)));
                }
                Err(e) => {
                    eprintln!("checkpoint {} is damaged ({e}); left in place, trying an older one", path.display());
                    reasons.push(format!("{}: {e}", path.display()));
                    damaged.push(path);
                }
            }
        }
        if reasons.is_empty() {
            return Ok(None);
        }
        bail!(Invalid, "no checkpoint in {} loads: {}", dir.as_ref().display(), reasons.join("; "))
    }

    /// A trainer from its metadata, model and optimizer state (`state.{i}`).
    pub(super) fn from_parts(
        meta: TrainerState,
        model: GPTModel,
        state: HashMap<String, Tensor>,
        source: &str,
    ) -> Result<Trainer> {
        let mut trainer = Trainer::with_model(model, meta.train_config)?;
        let state = (0..state.len())
            .map(|i| state.get(&format!("state.{i}")).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Invalid(format!("{source}: the optimizer state is missing tensors")))?;
        let params = trainer.params();
        trainer.optimizer.restore(&params, state, meta.optimizer_steps)?;
        trainer.step = meta.step;
        trainer.skipped_steps = meta.skipped_steps;
        trainer.data_position = meta.data_position;
        trainer.loss_scale = meta.loss_scale;
        Ok(trainer)
    }

    /// The newest checkpoint in `dir`, if any (whether it loads or not).
    pub fn latest_checkpoint(dir: impl AsRef<Path>) -> Result<Option<PathBuf>> {
        Ok(list_checkpoints(dir.as_ref())?.pop())
    }
}

/// The newest checkpoint in `dir` whose model (config.json, model.safetensors) loads onto
/// `device`; newer damaged ones are reported on stderr and skipped. For `generate`.
pub fn load_latest_model(dir: &Path, device: Device) -> Result<Option<(PathBuf, GPTModel)>> {
    let mut reasons = Vec::new();
    for path in list_checkpoints(dir)?.into_iter().rev() {
        match super::load_dir(&path, device) {
            Ok(m) => return Ok(Some((path, m))),
            Err(e) => {
                eprintln!("checkpoint {} is damaged ({e}); left in place, trying an older one", path.display());
                reasons.push(format!("{}: {e}", path.display()));
            }
        }
    }
    if reasons.is_empty() {
        return Ok(None);
    }
    bail!(Invalid, "no checkpoint in {} loads: {}", dir.display(), reasons.join("; "))
}

/// A LoRA checkpoint's model: the frozen weights (from the checkpoint, or the base model it names,
/// in BF16 if the run stores them so) with its adapters, on `device`.
fn lora_model(path: &Path, meta: &TrainerState, device: Device) -> Result<GPTModel> {
    let mut base = match &meta.train_config.base_model {
        Some(base) if !path.join("model.safetensors").exists() => super::load_weights(Path::new(base), Device::Cpu)
            .map_err(|e| Error::Invalid(format!("{}: its base model {base}: {e}", path.display())))?,
        _ => {
            check_config_json(path)?;
            GPTModel::from_tensors(
                meta.model_config.clone(),
                load_tensors(&path.join("model.safetensors"), Device::Cpu)?,
            )?
        }
    };
    if base.config.precision != meta.model_config.precision {
        base.cast(meta.model_config.precision)?;
    }
    let mut model = base.with_adapter(path)?;
    model.to_device(device)?;
    Ok(model)
}

/// config.json must parse: `generate` reads the model's config from it.
fn check_config_json(dir: &Path) -> Result<()> {
    let path = dir.join("config.json");
    let text = fs::read_to_string(&path).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    ModelConfig::from_hf_json(&json).map(|_| ())
}

/// `step_*` directories in `dir`, oldest first (partial and damaged ones set aside are ignored).
pub(super) fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
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
