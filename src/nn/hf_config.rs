//! ModelConfig to and from Hugging Face config.json: LlamaForCausalLM and Qwen2ForCausalLM.

use super::config::{Architecture, ModelConfig};
use crate::ops::RopeScaling;
use crate::{bail, Error, Precision, Result};
use serde_json::{json, Value};

/// A set field: neither absent, null nor false.
fn set(v: &Value, k: &str) -> bool {
    v.get(k).is_some_and(|x| !x.is_null() && x != &Value::Bool(false))
}

fn unsupported<T>(field: &str, value: &Value, why: &str) -> Result<T> {
    bail!(Invalid, "config.json: {field} = {value}: {why}")
}

impl ModelConfig {
    /// Hugging Face config.json (`LlamaForCausalLM` or `Qwen2ForCausalLM`): every field
    /// `from_hf_json` reads back, RoPE in the spelling transformers 4 and 5 both read.
    pub fn to_hf_json(&self) -> Value {
        let rope_scaling = match self.rope_scaling {
            RopeScaling::None => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                       "high_freq_factor": high_freq_factor,
                       "original_max_position_embeddings": original_max_position_embeddings})
            }
        };
        let mut v = json!({
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_dim,
            "intermediate_size": self.intermediate_dim,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_base,
            "rope_scaling": rope_scaling,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_weights,
            "hidden_act": "silu",
            "torch_dtype": if self.precision == Precision::BF16 { "bfloat16" } else { "float32" },
        });
        let extra = match self.architecture {
            Architecture::Llama => json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "attention_bias": self.attention_bias,
                "mlp_bias": self.mlp_bias,
            }),
            Architecture::Qwen2 => json!({
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "use_sliding_window": false,
            }),
        };
        let obj = v.as_object_mut().expect("an object");
        obj.extend(extra.as_object().expect("an object").clone());
        v
    }

    /// Reads a Hugging Face Llama or Qwen2 config.json (RoPE as rope_theta + rope_scaling or as
    /// transformers 5's rope_parameters). What this model cannot reproduce (another architecture,
    /// other RoPE types, sliding windows in use, experts, an activation other than SiLU) is an
    /// error naming the field, not a silently different model.
    pub fn from_hf_json(v: &Value) -> Result<Self> {
        let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
        let architecture = match v.get("model_type").and_then(|x| x.as_str()) {
            None | Some("llama") => Architecture::Llama,
            Some("qwen2") => Architecture::Qwen2,
            Some(_) => return unsupported("model_type", &field("model_type"), "only llama and qwen2 models load"),
        };
        // Qwen2 has no sliding window unless use_sliding_window says so; others read sliding_window.
        let window_off = match v.get("use_sliding_window") {
            Some(u) => u.as_bool() == Some(false),
            None => architecture == Architecture::Qwen2,
        };
        if set(v, "sliding_window") && !window_off {
            return unsupported(
                "sliding_window",
                &field("sliding_window"),
                "sliding-window attention is not supported",
            );
        }
        if let Some(types) = v.get("layer_types").and_then(|t| t.as_array()) {
            if !window_off && types.iter().any(|t| t.as_str() != Some("full_attention")) {
                return unsupported("layer_types", &field("layer_types"), "only full_attention layers are supported");
            }
        }
        for k in ["num_local_experts", "num_experts"] {
            if set(v, k) {
                return unsupported(k, &field(k), "mixtures of experts are not supported");
            }
        }
        if v.get("hidden_act").and_then(|x| x.as_str()).is_some_and(|a| a != "silu") {
            return unsupported("hidden_act", &field("hidden_act"), "only silu (SwiGLU) is supported");
        }
        let (attention_bias, mlp_bias) = match architecture {
            Architecture::Llama => (set(v, "attention_bias"), set(v, "mlp_bias")),
            // Qwen2's classes fix their biases and read neither field.
            Architecture::Qwen2 => (false, false),
        };
        let get = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::Invalid(format!("config.json: missing integer {k:?}")))
        };
        let (rope_base, rope_scaling) = rope(v)?;
        let heads = get("num_attention_heads")?;
        let hidden = get("hidden_size")?;
        let explicit_head_dim = match v.get("head_dim").filter(|x| !x.is_null()) {
            None => None,
            Some(x) => match x.as_u64() {
                Some(d) if heads > 0 && d as usize * heads == hidden => None,
                Some(d) => Some(d as usize),
                None => return unsupported("head_dim", x, "must be a positive integer"),
            },
        };
        let c = ModelConfig {
            vocab_size: get("vocab_size")?,
            hidden_dim: hidden,
            num_layers: get("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(heads),
            intermediate_dim: get("intermediate_size")?,
            max_seq_len: get("max_position_embeddings").unwrap_or(2048),
            rope_base,
            norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6) as f32,
            tie_weights: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            precision: match v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(|x| x.as_str()) {
                Some("bfloat16") => Precision::BF16,
                _ => Precision::FP32,
            },
            dropout: 0.0,
            explicit_head_dim,
            rope_scaling,
            attention_bias,
            mlp_bias,
            architecture,
        };
        c.validate()?;
        Ok(c)
    }
}

/// The RoPE base and scaling of a config.json: rope_parameters (transformers 5), else
/// rope_theta and rope_scaling (its type as `rope_type` or the older `type`).
fn rope(v: &Value) -> Result<(f32, RopeScaling)> {
    let (name, params) = match v.get("rope_parameters").filter(|p| !p.is_null()) {
        Some(p) => ("rope_parameters", Some(p)),
        None => ("rope_scaling", v.get("rope_scaling").filter(|p| set(v, "rope_scaling") && !p.is_null())),
    };
    let base = v
        .get("rope_theta")
        .or_else(|| params.and_then(|p| p.get("rope_theta")))
        .and_then(|x| x.as_f64())
        .unwrap_or(10000.0) as f32;
    let Some(p) = params else { return Ok((base, RopeScaling::None)) };
    if !p.is_object() {
        return unsupported(name, p, "expected an object with rope_type");
    }
    if let Some(f) = p.get("partial_rotary_factor").and_then(|f| f.as_f64()).filter(|f| *f != 1.0) {
        return unsupported(&format!("{name}.partial_rotary_factor"), &f.into(), "only full-width RoPE is supported");
    }
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
    let num = |k: &str| -> Result<f32> {
        match p.get(k).and_then(|x| x.as_f64()) {
            Some(x) => Ok(x as f32),
            None => bail!(Invalid, "config.json: {name}.{k} is missing: rope_type {kind:?} needs it"),
        }
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        },
        _ => {
            return unsupported(
                name,
                p,
                &format!("rope_type {kind:?} is not supported (default, linear and llama3 are)"),
            )
        }
    };
    Ok((base, scaling))
}
