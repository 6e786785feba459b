//! ModelConfig: the model's shape (vocabulary, width, depth, heads, FFN, context, RoPE, norm,
//! tying, precision), presets, validation, and Hugging Face config.json.

use crate::{bail, Error, Precision, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_dim: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention); equal to num_heads for plain multi-head.
    pub num_kv_heads: usize,
    /// FFN hidden size (SwiGLU).
    pub intermediate_dim: usize,
    pub max_seq_len: usize,
    pub rope_base: f32,
    pub norm_eps: f32,
    /// Share the embedding and output weights.
    pub tie_weights: bool,
    pub precision: Precision,
    /// Dropout on the embedding and on each residual branch while training (0 = off).
    #[serde(default)]
    pub dropout: f32,
}

impl ModelConfig {
    /// ~5M parameters: for tests and quick experiments.
    pub fn tiny() -> Self {
        ModelConfig {
            vocab_size: 32000,
            hidden_dim: 128,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 4,
            intermediate_dim: 384,
            max_seq_len: 512,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            tie_weights: true,
            precision: Precision::FP32,
            dropout: 0.0,
        }
    }

    /// ~32M parameters.
    pub fn small() -> Self {
        ModelConfig {
            hidden_dim: 512,
            num_layers: 6,
            num_heads: 8,
            num_kv_heads: 8,
            intermediate_dim: 1024,
            max_seq_len: 1024,
            ..Self::tiny()
        }
    }

    /// ~124M parameters (GPT-2 small's size).
    pub fn medium() -> Self {
        ModelConfig {
            hidden_dim: 768,
            num_layers: 12,
            num_heads: 12,
            num_kv_heads: 12,
            intermediate_dim: 2560,
            max_seq_len: 2048,
            ..Self::tiny()
        }
    }

    /// The TinyShakespeare demo: a 4096-token BPE vocabulary, 256-token context, dropout for small data.
    pub fn shakespeare() -> Self {
        ModelConfig {
            vocab_size: 4096,
            hidden_dim: 384,
            num_layers: 6,
            num_heads: 6,
            num_kv_heads: 6,
            intermediate_dim: 1024,
            max_seq_len: 256,
            dropout: 0.25,
            ..Self::tiny()
        }
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "tiny" => Self::tiny(),
            "small" => Self::small(),
            "medium" => Self::medium(),
            "shakespeare" => Self::shakespeare(),
            other => bail!(
                Invalid,
                "unknown model config {other:?}: expected tiny, small, medium, shakespeare or a JSON file"
            ),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_dim / self.num_heads
    }

    /// An error that says what to change, for a config that cannot work.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let bad = |m: String| Err(Error::Invalid(format!("model config: {m}")));
        if c.vocab_size == 0 || c.hidden_dim == 0 || c.num_layers == 0 || c.num_heads == 0 || c.intermediate_dim == 0 {
            return bad("vocab_size, hidden_dim, num_layers, num_heads and intermediate_dim must be positive".into());
        }
        if !c.hidden_dim.is_multiple_of(c.num_heads) {
            return bad(format!("num_heads ({}) must divide hidden_dim ({})", c.num_heads, c.hidden_dim));
        }
        if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return bad(format!("num_kv_heads ({}) must divide num_heads ({})", c.num_kv_heads, c.num_heads));
        }
        if !c.head_dim().is_multiple_of(2) {
            return bad(format!("head dim hidden_dim/num_heads = {} must be even for RoPE", c.head_dim()));
        }
        if c.max_seq_len == 0 || c.rope_base <= 1.0 || c.norm_eps <= 0.0 || !(0.0..1.0).contains(&c.dropout) {
            return bad("max_seq_len > 0, rope_base > 1, norm_eps > 0 and 0 <= dropout < 1 are required".into());
        }
        if c.precision == Precision::U32 {
            return bad("precision must be FP32 or BF16".into());
        }
        Ok(())
    }

    /// Parameter count (tied weights counted once).
    pub fn num_params(&self) -> usize {
        let (c, f, kv) = (self.hidden_dim, self.intermediate_dim, self.num_kv_heads * self.head_dim());
        let layer = 2 * c * c + 2 * c * kv + 3 * c * f + 2 * c;
        let out = if self.tie_weights { 0 } else { self.vocab_size * c };
        self.vocab_size * c + self.num_layers * layer + c + out
    }

    /// Hugging Face `LlamaForCausalLM` config.json.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_dim,
            "intermediate_size": self.intermediate_dim,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_base,
            "rms_norm_eps": self.norm_eps,
            "tie_word_embeddings": self.tie_weights,
            "hidden_act": "silu",
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": if self.precision == Precision::BF16 { "bfloat16" } else { "float32" },
        })
    }

    /// Reads a Hugging Face Llama config.json (both spellings of the RoPE base). What this model
    /// cannot reproduce (another architecture, RoPE scaling, biases, sliding windows, experts,
    /// an activation other than SiLU) is an error naming the field, not a silently different model.
    pub fn from_hf_json(v: &serde_json::Value) -> Result<Self> {
        let unsupported = |field: &str, why: &str| -> Result<Self> {
            let value = v.get(field).map_or("".into(), |x| x.to_string());
            bail!(Invalid, "config.json: {field} = {value}: {why}")
        };
        match v.get("model_type").and_then(|x| x.as_str()) {
            None | Some("llama") => {}
            Some(_) => return unsupported("model_type", "only llama (LlamaForCausalLM) models load"),
        }
        let set = |k: &str| v.get(k).is_some_and(|x| !x.is_null() && x != &serde_json::Value::Bool(false));
        if set("rope_scaling") {
            return unsupported("rope_scaling", "scaled RoPE is not supported yet");
        }
        let rope_type = v.get("rope_parameters").and_then(|r| r.get("rope_type")).and_then(|t| t.as_str());
        if rope_type.is_some_and(|t| t != "default") {
            return unsupported("rope_parameters", "scaled RoPE is not supported yet");
        }
        for field in ["attention_bias", "mlp_bias"] {
            if set(field) {
                return unsupported(field, "biases are not supported yet");
            }
        }
        if set("sliding_window") && v.get("use_sliding_window").is_none_or(|x| x.as_bool() != Some(false)) {
            return unsupported("sliding_window", "sliding-window attention is not supported");
        }
        for field in ["num_local_experts", "num_experts"] {
            if set(field) {
                return unsupported(field, "mixtures of experts are not supported");
            }
        }
        if v.get("hidden_act").and_then(|x| x.as_str()).is_some_and(|a| a != "silu") {
            return unsupported("hidden_act", "only silu (SwiGLU) is supported");
        }
        let get = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| Error::Invalid(format!("config.json: missing integer {k:?}")))
        };
        let rope = v
            .get("rope_theta")
            .or_else(|| v.get("rope_parameters").and_then(|r| r.get("rope_theta")))
            .and_then(|x| x.as_f64())
            .unwrap_or(10000.0);
        let heads = get("num_attention_heads")?;
        let c = ModelConfig {
            vocab_size: get("vocab_size")?,
            hidden_dim: get("hidden_size")?,
            num_layers: get("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: get("num_key_value_heads").unwrap_or(heads),
            intermediate_dim: get("intermediate_size")?,
            max_seq_len: get("max_position_embeddings").unwrap_or(2048),
            rope_base: rope as f32,
            norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6) as f32,
            tie_weights: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            precision: match v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(|x| x.as_str()) {
                Some("bfloat16") => Precision::BF16,
                _ => Precision::FP32,
            },
            dropout: 0.0,
        };
        if let Some(hd) = v.get("head_dim").and_then(|x| x.as_u64()) {
            if hd as usize != c.head_dim() {
                bail!(
                    Invalid,
                    "config.json: head_dim {hd} differs from hidden_size/num_attention_heads = {}; not supported",
                    c.head_dim()
                );
            }
        }
        c.validate()?;
        Ok(c)
    }
}
