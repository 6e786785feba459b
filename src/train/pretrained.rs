//! Models as a user points at them: a GGUF file, a Hugging Face folder, a checkpoint (with or
//! without a LoRA adapter on a base model), or a run directory (its newest checkpoint that loads).

use super::adapter::{is_adapter, read_adapter_config};
use super::checkpoints::load_latest_model;
use crate::data::Tokenizer;
use crate::nn::GPTModel;
use crate::{Device, Error, Result};
use std::path::{Path, PathBuf};

/// The model of a checkpoint or Hugging Face folder `dir`: its config.json and weights, with the
/// LoRA adapter there on them; an adapter alone goes on the base model its adapter_config.json
/// names.
pub fn load_dir(dir: &Path, device: Device) -> Result<GPTModel> {
    if !is_adapter(dir) {
        return GPTModel::from_pretrained(dir, device);
    }
    let base = if dir.join("config.json").exists() {
        GPTModel::from_pretrained(dir, Device::Cpu)?
    } else {
        let (_, base) = read_adapter_config(dir)?;
        let base = base.filter(|b| Path::new(b).exists()).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: its adapter_config.json names no base model on this machine (base_model_name_or_path); \
                 load the base model and pass this folder as its adapter (generate --adapter)",
                dir.display()
            ))
        })?;
        load_weights(Path::new(&base), Device::Cpu)?
    };
    let mut model = base.with_adapter(dir)?;
    model.to_device(device)?;
    Ok(model)
}

/// The model and tokenizer of `given`: a GGUF file, a checkpoint or Hugging Face folder, or a
/// run directory (its newest checkpoint that loads), with the tokenizer.json beside it, in its
/// run, or beside the base model of an adapter.
pub fn load_model(given: &Path, device: Device) -> Result<(GPTModel, Tokenizer)> {
    if given.extension().is_some_and(|e| e == "gguf") {
        return crate::gguf::load(given, device);
    }
    let (model, dir, run_dir) = find_model(given, device)?;
    let base = is_adapter(&dir).then(|| read_adapter_config(&dir).ok().and_then(|c| c.1)).flatten();
    let places = [dir.join("tokenizer.json"), run_dir.join("tokenizer.json")];
    let places = places.into_iter().chain(base.map(|b| Path::new(&b).join("tokenizer.json")));
    let tok_path = places.into_iter().find(|p| p.exists());
    let tok_path = tok_path.ok_or_else(|| Error::Invalid(format!("no tokenizer.json beside {}", dir.display())))?;
    Ok((model, Tokenizer::load(tok_path)?))
}

/// `load_model` without the tokenizer: the weights of `given` alone.
pub fn load_weights(given: &Path, device: Device) -> Result<GPTModel> {
    if given.extension().is_some_and(|e| e == "gguf") {
        return Ok(crate::gguf::load(given, device)?.0);
    }
    Ok(find_model(given, device)?.0)
}

/// The model of `given` (a model folder, or a run's newest checkpoint that loads), its folder
/// and its run directory.
fn find_model(given: &Path, device: Device) -> Result<(GPTModel, PathBuf, PathBuf)> {
    let is_dir = |p: &Path| ["trainer.json", "config.json", "adapter_config.json"].iter().any(|f| p.join(f).exists());
    if is_dir(given) {
        let run = given.parent().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
        return Ok((load_dir(given, device)?, given.to_path_buf(), run));
    }
    let (ckpt, model) = load_latest_model(&given.join("checkpoints"), device)?.ok_or_else(|| {
        Error::Invalid(format!("{}: no checkpoint found (train first, or point --checkpoint at one)", given.display()))
    })?;
    Ok((model, ckpt, given.to_path_buf()))
}
