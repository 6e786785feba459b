//! GGUF export and loading for llama.cpp, Ollama and LM Studio: the `llama` architecture with a
//! byte-level BPE (`gpt2`) tokenizer; F32, F16, BF16 and Q8_0 tensors.
//!
//! - [`format`]: the container (header, metadata, tensor infos, aligned data)
//! - [`quant`]: tensor encodings and dequantization
//! - [`llama`]: hyperparameter keys, tensor names, the Q/K row order of llama.cpp's RoPE
//! - [`tokenizer`]: the `tokenizer.ggml.*` keys

pub mod format;
pub mod llama;
pub mod quant;
pub mod tokenizer;

use crate::data::Tokenizer;
use crate::fs::write_atomic;
use crate::{Device, Error, GPTModel, Result, Tensor};
use format::{GgufFile, TensorData};
use std::collections::HashMap;
use std::path::Path;

/// How the exported matrices are stored (norm weights are always F32, as llama.cpp keeps them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    /// Matrices whose rows are not a multiple of 32 long fall back to F16.
    Q8_0,
}

impl GgufType {
    /// `f32`, `f16` or `q8_0` (as `--type` spells them).
    pub fn parse(s: &str) -> Result<GgufType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufType::F32),
            "f16" => Ok(GgufType::F16),
            "q8_0" => Ok(GgufType::Q8_0),
            _ => Err(Error::Invalid(format!("gguf export: --type {s:?} is not one of f32, f16, q8_0"))),
        }
    }

    /// llama.cpp's `general.file_type` (ALL_F32, MOSTLY_F16, MOSTLY_Q8_0).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }

    /// The ggml type of a tensor of `shape` (HF order: the last dimension is innermost).
    fn tensor_type(self, shape: &[usize]) -> u32 {
        match self {
            _ if shape.len() < 2 => quant::F32,
            GgufType::F32 => quant::F32,
            GgufType::F16 => quant::F16,
            GgufType::Q8_0 if shape[shape.len() - 1].is_multiple_of(quant::Q8_BLOCK) => quant::Q8_0,
            GgufType::Q8_0 => quant::F16,
        }
    }
}

/// Writes `model` and `tokenizer` as a llama GGUF v3 file that llama.cpp runs as it is.
pub fn export(model: &GPTModel, tokenizer: &Tokenizer, path: impl AsRef<Path>, ty: GgufType) -> Result<()> {
    let path = path.as_ref();
    let err = |e: Error| Error::Invalid(format!("gguf export {}: {e}", path.display()));
    let c = &model.config;
    if model.lora.is_some() {
        return Err(err(Error::Invalid("the model has LoRA adapters: merge them first (`GPTModel::merged`)".into())));
    }
    llama::check_exportable(c).map_err(err)?;
    let mut file = GgufFile { metadata: llama::metadata(c, ty.file_type()), tensors: Vec::new() };
    file.metadata.extend(tokenizer::metadata(tokenizer, c.vocab_size).map_err(err)?);
    for (name, t) in model.parameters() {
        let gguf = llama::gguf_name(name)
            .ok_or_else(|| err(Error::Invalid(format!("parameter {name} has no llama.cpp name"))))?;
        let shape = t.shape();
        let mut values = t.to_vec();
        if let Some(heads) = llama::rope_heads(name, c) {
            values = llama::permute_qk(&values, shape[1], heads, true);
        }
        let tt = ty.tensor_type(shape);
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        file.tensors.push(TensorData { name: gguf, dims, ty: tt, bytes: quant::encode(&values, tt) });
    }
    write_atomic(path, &file.to_bytes()).map_err(err)
}

/// Reads and parses a GGUF file (tensors of types other than F32, F16, BF16, Q8_0 are refused).
pub fn read(path: impl AsRef<Path>) -> Result<GgufFile> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|e| Error::Invalid(format!("gguf: cannot read {}: {e}", path.display())))?;
    GgufFile::parse(&bytes, quant::byte_size).map_err(|e| Error::Invalid(format!("gguf: {}: {e}", path.display())))
}

/// The model (on `device`, FP32, tensors dequantized) and tokenizer of a llama GGUF file.
pub fn load(path: impl AsRef<Path>, device: Device) -> Result<(GPTModel, Tokenizer)> {
    let path = path.as_ref();
    let file = read(path)?;
    let err = |e: Error| Error::Invalid(format!("gguf: {}: {e}", path.display()));
    let config = llama::config(&file).map_err(err)?;
    let tokenizer = tokenizer::from_metadata(&file).map_err(err)?;
    let tensors: HashMap<&str, &TensorData> = file.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let model = GPTModel::load(config.clone(), |name, shape| {
        let gguf = llama::gguf_name(name).expect("every model parameter has a llama.cpp name");
        let t = tensors.get(gguf.as_str()).ok_or_else(|| err(Error::Invalid(format!("no tensor {gguf}"))))?;
        let want: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if t.dims != want {
            return Err(err(Error::Invalid(format!("tensor {gguf} has dims {:?}, expected {want:?}", t.dims))));
        }
        let mut values = quant::decode(&t.bytes, t.ty);
        if let Some(heads) = llama::rope_heads(name, &config) {
            values = llama::permute_qk(&values, shape[1], heads, false);
        }
        Tensor::from_f32_on(&values, shape, device)
    })?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(err(Error::Invalid(format!(
            "the tokenizer has {} tokens but the model only {} embedding rows",
            tokenizer.vocab_size(),
            config.vocab_size
        ))));
    }
    Ok((model, tokenizer))
}
