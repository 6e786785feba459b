//! `irontensor export`: a checkpoint (or a run's newest) as a GGUF file for llama.cpp.

use super::generate::load_model;
use crate::gguf::{self, GgufType};
use crate::{Device, Result};
use std::path::Path;

/// Writes the model and tokenizer of `checkpoint` (see `load_model`) to `out` as GGUF of type
/// `ty` (f32, f16 or q8_0), and says what it wrote.
pub fn export(checkpoint: &Path, out: &Path, ty: &str) -> Result<()> {
    let ty = GgufType::parse(ty)?; // a bad --type stops before anything loads
    let (model, tok) = load_model(checkpoint, Device::Cpu)?;
    gguf::export(&model, &tok, out, ty)?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    let c = &model.config;
    println!(
        "wrote {} ({:.1} MB, {ty:?}): {:.1}M parameters, {} layers, vocab {}",
        out.display(),
        bytes as f64 / 1e6,
        c.num_params() as f64 / 1e6,
        c.num_layers,
        c.vocab_size
    );
    Ok(())
}
