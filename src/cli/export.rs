//! `irontensor export`: a checkpoint (or a run's newest) as a GGUF file for llama.cpp, or as a
//! Hugging Face folder for transformers, with LoRA adapters merged into the weights.

use super::generate::load_model;
use crate::gguf::{self, GgufType};
use crate::{bail, Device, Error, Result};
use std::path::{Path, PathBuf};

/// The tokenizer and generation files a Hugging Face folder carries beside the weights.
const SIDE_FILES: [&str; 4] =
    ["tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// Writes the model and tokenizer of `checkpoint` (see `load_model`) to `gguf` (of type `ty`:
/// f32, f16 or q8_0) or to the folder `out`, and says what it wrote. A model with LoRA adapters
/// needs `merge`.
pub fn export(checkpoint: &Path, gguf: Option<&Path>, out: Option<&Path>, ty: &str, merge: bool) -> Result<()> {
    if gguf.is_some() == out.is_some() {
        bail!(Invalid, "export: give --gguf FILE (for llama.cpp) or --out DIR (a Hugging Face folder), one of them");
    }
    let ty = GgufType::parse(ty)?; // a bad --type stops before anything loads
    let (model, tok) = load_model(checkpoint, Device::Cpu)?;
    if model.lora.is_some() && !merge {
        bail!(
            Invalid,
            "{} holds LoRA adapters (already in PEFT's format there); add --merge to fold them into the weights",
            checkpoint.display()
        );
    }
    let model = model.merged()?;
    let c = &model.config;
    let what =
        format!("{:.1}M parameters, {} layers, vocab {}", c.num_params() as f64 / 1e6, c.num_layers, c.vocab_size);
    if let Some(path) = gguf {
        gguf::export(&model, &tok, path, ty)?;
        let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({:.1} MB, {ty:?}): {what}", path.display(), bytes as f64 / 1e6);
        return Ok(());
    }
    let dir = out.expect("checked above");
    model.save_pretrained(dir)?;
    tok.save(dir.join("tokenizer.json"))?;
    for name in SIDE_FILES {
        if let Some(from) = side_file(checkpoint, name) {
            std::fs::copy(&from, dir.join(name))
                .map_err(|e| Error::Invalid(format!("copying {} to {}: {e}", from.display(), dir.display())))?;
        }
    }
    println!("wrote {} (config.json, model.safetensors, tokenizer): {what}", dir.display());
    Ok(())
}

/// `name` beside the checkpoint, in its run, or beside the base model of its adapter.
fn side_file(checkpoint: &Path, name: &str) -> Option<PathBuf> {
    let mut places = vec![checkpoint.to_path_buf()];
    places.extend(checkpoint.parent().and_then(Path::parent).map(Path::to_path_buf));
    let adapter_dirs = [checkpoint.to_path_buf()]
        .into_iter()
        .chain(crate::train::Trainer::latest_checkpoint(checkpoint.join("checkpoints")).ok().flatten());
    for dir in adapter_dirs {
        if let Ok((_, Some(base))) = crate::train::read_adapter_config(&dir) {
            places.push(PathBuf::from(base));
        }
    }
    places.into_iter().map(|p| p.join(name)).find(|p| p.exists())
}
