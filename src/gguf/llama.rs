//! The `llama` architecture in GGUF: hyperparameter keys, tensor names, and the Q/K row order
//! llama.cpp's RoPE expects.

use super::format::{GgufFile, Value};
use crate::nn::Architecture;
use crate::ops::RopeScaling;
use crate::{Error, ModelConfig, Precision, Result};

/// An error naming what llama.cpp's `llama` architecture, as written here, would misread:
/// biases, a Qwen2 model, scaled RoPE.
pub fn check_exportable(c: &ModelConfig) -> Result<()> {
    let why = if c.architecture != Architecture::Llama {
        Some(format!("architecture {:?} (only Llama models export)", c.architecture))
    } else if c.attention_bias || c.mlp_bias {
        Some("biases (attention_bias or mlp_bias)".to_string())
    } else if c.rope_scaling != RopeScaling::None {
        Some(format!("RoPE scaling {:?}", c.rope_scaling))
    } else {
        None
    };
    match why {
        Some(w) => Err(Error::Invalid(format!("cannot be written as a llama GGUF yet: the model has {w}"))),
        None => Ok(()),
    }
}

/// llama.cpp's name for a Hugging Face parameter name (None for names it has no place for).
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.weight"))
}

/// The number of heads whose rows `hf` holds when llama.cpp wants them reordered (q: heads,
/// k: key/value heads); None for every other tensor.
pub fn rope_heads(hf: &str, c: &ModelConfig) -> Option<usize> {
    if hf.ends_with("self_attn.q_proj.weight") {
        Some(c.num_heads)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        Some(c.num_kv_heads)
    } else {
        None
    }
}

/// Reorders the rows of `w` ([heads·D, cols]) within each head between Hugging Face's
/// rotate-half order (row s·D/2 + j) and llama.cpp's interleaved pairs (row 2j + s).
/// `to_gguf` false undoes it.
pub fn permute_qk(w: &[f32], cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let d = w.len() / cols / heads;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for j in 0..d / 2 {
            for s in 0..2 {
                let (hf, gg) = (h * d + s * d / 2 + j, h * d + 2 * j + s);
                let (src, dst) = if to_gguf { (hf, gg) } else { (gg, hf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// The `general.*` and `llama.*` keys for `c`.
pub fn metadata(c: &ModelConfig, file_type: u32) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let kv = |k: &str, v: Value| (k.to_string(), v);
    vec![
        kv("general.architecture", Value::Str("llama".into())),
        kv("general.name", Value::Str("irontensor".into())),
        kv("general.file_type", Value::U32(file_type)),
        kv("llama.vocab_size", u(c.vocab_size)),
        kv("llama.context_length", u(c.max_seq_len)),
        kv("llama.embedding_length", u(c.hidden_dim)),
        kv("llama.block_count", u(c.num_layers)),
        kv("llama.feed_forward_length", u(c.intermediate_dim)),
        kv("llama.attention.head_count", u(c.num_heads)),
        kv("llama.attention.head_count_kv", u(c.num_kv_heads)),
        kv("llama.attention.layer_norm_rms_epsilon", Value::F32(c.norm_eps)),
        kv("llama.rope.freq_base", Value::F32(c.rope_base)),
        kv("llama.rope.dimension_count", u(c.head_dim())),
        kv("llama.attention.key_length", u(c.head_dim())),
        kv("llama.attention.value_length", u(c.head_dim())),
    ]
}

/// The model config of a llama GGUF; errors name the missing or unsupported key.
pub fn config(f: &GgufFile) -> Result<ModelConfig> {
    let arch = f.get("general.architecture").and_then(Value::as_str).unwrap_or("(none)");
    if arch != "llama" {
        return Err(Error::Invalid(format!(
            "architecture {arch:?} is not supported: only \"llama\" (general.architecture) loads"
        )));
    }
    let int = |k: &str| -> Result<usize> {
        f.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| Error::Invalid(format!("missing or non-integer metadata {k:?}")))
    };
    let heads = int("llama.attention.head_count")?;
    let embd = f.tensor("token_embd.weight").ok_or_else(|| Error::Invalid("no tensor token_embd.weight".into()))?;
    let c = ModelConfig {
        vocab_size: int("llama.vocab_size").or_else(|_| {
            embd.dims
                .get(1)
                .map(|&v| v as usize)
                .ok_or_else(|| Error::Invalid("token_embd.weight is not 2-D and llama.vocab_size is missing".into()))
        })?,
        hidden_dim: int("llama.embedding_length")?,
        num_layers: int("llama.block_count")?,
        num_heads: heads,
        num_kv_heads: int("llama.attention.head_count_kv").unwrap_or(heads),
        intermediate_dim: int("llama.feed_forward_length")?,
        max_seq_len: int("llama.context_length")?,
        rope_base: f.get("llama.rope.freq_base").and_then(Value::as_f64).unwrap_or(10000.0) as f32,
        norm_eps: f
            .get("llama.attention.layer_norm_rms_epsilon")
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::Invalid("missing metadata \"llama.attention.layer_norm_rms_epsilon\"".into()))?
            as f32,
        tie_weights: f.tensor("output.weight").is_none(),
        precision: Precision::FP32,
        dropout: 0.0,
        // The head width: key_length where given (it may differ from embedding_length / head_count).
        explicit_head_dim: int("llama.attention.key_length")
            .ok()
            .filter(|&d| d * heads != int("llama.embedding_length").unwrap_or(0)),
        ..ModelConfig::tiny()
    };
    c.validate()?;
    for k in ["llama.rope.dimension_count", "llama.attention.value_length"] {
        if let Ok(v) = int(k) {
            if v != c.head_dim() {
                return Err(Error::Invalid(format!(
                    "{k} = {v} differs from the head width {} (key_length, or embedding_length / head_count): not supported",
                    c.head_dim()
                )));
            }
        }
    }
    if let Some(t) = f.get("llama.rope.scaling.type").and_then(Value::as_str).filter(|t| *t != "none") {
        return Err(Error::Invalid(format!("RoPE scaling {t:?} (llama.rope.scaling.type) is not supported")));
    }
    // What llama.cpp's converter writes for Llama 3.1's RoPE scaling, and biases: not read yet,
    // so refused rather than silently dropped.
    if let Some(t) = f.tensors.iter().find(|t| t.name == "rope_freqs.weight" || t.name.ends_with(".bias")) {
        return Err(Error::Invalid(format!(
            "tensor {} (RoPE frequency factors or a bias) is not supported in a GGUF yet",
            t.name
        )));
    }
    Ok(c)
}
