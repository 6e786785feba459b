//! Checkpoint files: tensors in safetensors, written atomically (temporary, fsync, rename),
//! and Hugging Face `save_pretrained` / `from_pretrained` for GPTModel.

use crate::fs::write_atomic;
use crate::nn::{GPTModel, LoraConfig, ModelConfig};
use crate::{bail, Device, Error, Precision, Result, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::fs;
use std::path::Path;

fn dtype(p: Precision) -> Dtype {
    match p {
        Precision::FP32 => Dtype::F32,
        Precision::BF16 => Dtype::BF16,
        Precision::U32 => Dtype::U32,
    }
}

/// Saves named tensors (read back from any device) as one safetensors file.
pub fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    write_atomic(path, &tensors_to_bytes(tensors, None)?)
}

/// Named tensors (and string metadata) in the safetensors format, in memory.
pub fn tensors_to_bytes(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let data: Vec<(String, Vec<u8>, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.raw_bytes(), t)).collect();
    let views = data
        .iter()
        .map(|(n, bytes, t)| {
            let v = TensorView::new(dtype(t.dtype()), t.shape().to_vec(), bytes)
                .map_err(|e| Error::Invalid(format!("{n}: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::Invalid(format!("safetensors: {e}")))
}

/// Loads every tensor of a safetensors file onto `device`.
pub fn load_tensors(path: &Path, device: Device) -> Result<HashMap<String, Tensor>> {
    let bytes = fs::read(path).map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    Ok(tensors_from_bytes(&bytes, device, &path.display().to_string())?.0)
}

/// The tensors (onto `device`) and metadata of safetensors bytes; `source` names them in errors.
pub fn tensors_from_bytes(
    bytes: &[u8],
    device: Device,
    source: &str,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let corrupt = |e| Error::Invalid(format!("{source} is not a valid safetensors file (truncated or corrupt?): {e}"));
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let p = match view.dtype() {
            Dtype::F32 => Precision::FP32,
            Dtype::BF16 => Precision::BF16,
            Dtype::U32 => Precision::U32,
            Dtype::F16 => {
                // Every f16 value is exactly an f32, so F16 checkpoints load as FP32.
                let wide: Vec<f32> =
                    view.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                out.insert(
                    name,
                    Tensor::from_bytes(bytemuck::cast_slice(&wide), view.shape(), Precision::FP32, device)?,
                );
                continue;
            }
            other => {
                bail!(Dtype, "{source}: tensor {name} has dtype {other:?}; only F32, F16, BF16 and U32 are supported")
            }
        };
        out.insert(name, Tensor::from_bytes(view.data(), view.shape(), p, device)?);
    }
    let metadata = safetensors::SafeTensors::read_metadata(bytes).map_err(corrupt)?.1.metadata().clone();
    Ok((out, metadata.unwrap_or_default()))
}

/// The tensors of `dir`'s model.safetensors, or of the shards its model.safetensors.index.json
/// names (as transformers saves models over its shard size).
fn load_weights(dir: &Path, device: Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() || !index.exists() {
        return load_tensors(&single, device);
    }
    let bad = |e: String| Error::Invalid(format!("{}: {e}", index.display()));
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(&index)?).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map".into()))?;
    let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    shards.sort();
    shards.dedup();
    let mut all = HashMap::new();
    for shard in shards {
        all.extend(load_tensors(&dir.join(shard), device)?);
    }
    Ok(all)
}

impl GPTModel {
    /// Writes `config.json` and `model.safetensors` in `dir`, as Hugging Face's LlamaForCausalLM.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir)?;
        let json = serde_json::to_vec_pretty(&self.config.to_hf_json()).expect("config serialises");
        write_atomic(&dir.join("config.json"), &json)?;
        // The weights alone: LoRA adapters go to their own files (`save_adapter`).
        let weights: Vec<(String, Tensor)> =
            self.parameters().iter().filter(|(n, _)| !n.contains(".lora_")).cloned().collect();
        save_tensors(&dir.join("model.safetensors"), &weights)
    }

    /// Loads a model saved by `save_pretrained` or by transformers (Llama layout, one file or
    /// sharded) onto `device`.
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device) -> Result<GPTModel> {
        let dir = dir.as_ref();
        let text = fs::read_to_string(dir.join("config.json"))
            .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", dir.join("config.json").display())))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join("config.json").display())))?;
        let config = ModelConfig::from_hf_json(&json)?;
        GPTModel::from_tensors(config, load_weights(dir, device)?)
    }

    /// A model from named tensors; a missing or misshapen weight is an error naming it.
    pub fn from_tensors(config: ModelConfig, tensors: HashMap<String, Tensor>) -> Result<GPTModel> {
        GPTModel::from_tensors_with(config, None, tensors)
    }

    /// `from_tensors` with LoRA adapters among the tensors (kept f32; the weights take the
    /// config's precision).
    pub fn from_tensors_with(
        config: ModelConfig,
        lora: Option<LoraConfig>,
        mut tensors: HashMap<String, Tensor>,
    ) -> Result<GPTModel> {
        let precision = config.precision;
        GPTModel::load_with(config, lora, |name, _| match tensors.remove(name) {
            Some(t) if t.dtype() == Precision::U32 => bail!(Dtype, "{name}: weights must be F32 or BF16, got U32"),
            Some(t) if name.contains(".lora_") => crate::ops::cast(&t, Precision::FP32),
            Some(t) => crate::ops::cast(&t, precision),
            None => bail!(Invalid, "checkpoint has no tensor {name:?}: it does not match this model config"),
        })
    }
}
