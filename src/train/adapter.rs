//! LoRA adapters on disk in PEFT's format (adapter_config.json, adapter_model.safetensors), so
//! `peft.PeftModel.from_pretrained` loads what we train, and we load what PEFT trains.

use super::checkpoint::{load_tensors, save_tensors};
use crate::fs::write_atomic;
use crate::nn::{peft_name, GPTModel, LoraConfig};
use crate::{bail, ops, Device, Error, Precision, Result, Tensor};
use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// Whether `dir` holds a LoRA adapter.
pub fn is_adapter(dir: &Path) -> bool {
    dir.join("adapter_config.json").exists()
}

/// The adapter config of `dir`, and the base model it names (`base_model_name_or_path`).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, Option<String>)> {
    let path = dir.join("adapter_config.json");
    let text = fs::read_to_string(&path).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let base = json.get("base_model_name_or_path").and_then(|b| b.as_str()).map(String::from);
    Ok((LoraConfig::from_peft_json(&json).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?, base))
}

impl GPTModel {
    /// Writes the LoRA adapters as PEFT does: adapter_config.json (naming `base`) and
    /// adapter_model.safetensors (f32, PEFT's tensor names).
    pub fn save_adapter(&self, dir: impl AsRef<Path>, base: &str) -> Result<()> {
        let dir = dir.as_ref();
        let Some(lora) = &self.lora else { bail!(Invalid, "save_adapter: the model has no LoRA adapters") };
        fs::create_dir_all(dir)?;
        let json = serde_json::to_vec_pretty(&lora.to_peft_json(base)).expect("serialises");
        write_atomic(&dir.join("adapter_config.json"), &json)?;
        let tensors: Vec<(String, Tensor)> =
            self.trainable().into_iter().map(|(n, t)| (peft_name(&n), t.detach())).collect();
        save_tensors(&dir.join("adapter_model.safetensors"), &tensors)
    }

    /// This model (without adapters) with the adapter in `dir` on it: its config and tensors,
    /// every one it should have and no other.
    pub fn with_adapter(self, dir: impl AsRef<Path>) -> Result<GPTModel> {
        let dir = dir.as_ref();
        let (lora, _) = read_adapter_config(dir)?;
        let path = dir.join("adapter_model.safetensors");
        let tensors = load_tensors(&path, Device::Cpu)?;
        self.with_adapter_tensors(lora, tensors, &path.display().to_string())
    }

    /// `with_adapter` from tensors named as PEFT names them (or as we do), read on any device.
    pub fn with_adapter_tensors(
        self,
        lora: LoraConfig,
        tensors: HashMap<String, Tensor>,
        source: &str,
    ) -> Result<GPTModel> {
        if self.lora.is_some() {
            bail!(Invalid, "{source}: the model already has LoRA adapters");
        }
        let mut adapter: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in tensors {
            let ours = name.strip_prefix("base_model.model.").unwrap_or(&name);
            // PEFT names a tensor with its adapter's name in memory ("lora_A.default.weight"), not on disk.
            let ours = ours.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.");
            adapter.insert(ours, t);
        }
        let device = self.device();
        let mut old: HashMap<String, Tensor> = self.parameters().iter().cloned().collect();
        let model = GPTModel::load_with(self.config.clone(), Some(lora), |name, shape| {
            if let Some(t) = old.remove(name) {
                return Ok(t.detach());
            }
            let t = adapter
                .remove(name)
                .ok_or_else(|| Error::Invalid(format!("{source}: no tensor {} for this model", peft_name(name))))?;
            if t.shape() != shape {
                bail!(Shape, "{source}: {} is {:?}; this model needs {shape:?}", peft_name(name), t.shape());
            }
            crate::no_grad(|| ops::cast(&t, Precision::FP32)?.to_device(device))
        })?;
        if let Some(extra) = adapter.keys().next() {
            bail!(Invalid, "{source}: {} tensors this model has no place for, such as {extra}", adapter.len());
        }
        Ok(model)
    }
}
