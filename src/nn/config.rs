//! ModelConfig: the model's shape (vocabulary, width, depth, heads, FFN, context, RoPE, norm,
//! tying, precision, biases, architecture), presets and validation; config.json is in hf_config.rs.

use crate::ops::{Rope, RopeScaling};
use crate::{bail, Error, Precision, Result};
use serde::{Deserialize, Serialize};

/// The Hugging Face class the model follows: they differ only in where the biases are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// `LlamaForCausalLM`: biases as `attention_bias` (q, k, v, o) and `mlp_bias` say.
    #[default]
    Llama,
    /// `Qwen2ForCausalLM`: biases on q, k and v, none elsewhere.
    Qwen2,
}

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
    /// Width of one attention head when it is not hidden_dim / num_heads (config.json's head_dim).
    #[serde(default)]
    pub explicit_head_dim: Option<usize>,
    /// RoPE frequencies rescaled for a longer context (config.json's rope_scaling).
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    /// Llama: biases on q, k, v and o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on gate, up and down.
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub architecture: Architecture,
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
            explicit_head_dim: None,
            rope_scaling: RopeScaling::None,
            attention_bias: false,
            mlp_bias: false,
            architecture: Architecture::Llama,
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
        self.explicit_head_dim.unwrap_or(self.hidden_dim / self.num_heads.max(1))
    }

    /// Width of the queries (and of o_proj's input): num_heads · head_dim.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim()
    }

    /// Width of the keys and of the values: num_kv_heads · head_dim.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim()
    }

    /// Whether q_proj, k_proj and v_proj have biases.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.architecture == Architecture::Qwen2
    }

    /// Whether o_proj has a bias.
    pub fn o_bias(&self) -> bool {
        self.attention_bias
    }

    /// RoPE's base and scaling.
    pub fn rope(&self) -> Rope {
        Rope { base: self.rope_base, scaling: self.rope_scaling }
    }

    /// An error that says what to change, for a config that cannot work.
    pub fn validate(&self) -> Result<()> {
        let c = self;
        let bad = |m: String| Err(Error::Invalid(format!("model config: {m}")));
        if c.vocab_size == 0 || c.hidden_dim == 0 || c.num_layers == 0 || c.num_heads == 0 || c.intermediate_dim == 0 {
            return bad("vocab_size, hidden_dim, num_layers, num_heads and intermediate_dim must be positive".into());
        }
        if c.explicit_head_dim.is_none() && !c.hidden_dim.is_multiple_of(c.num_heads) {
            return bad(format!("num_heads ({}) must divide hidden_dim ({})", c.num_heads, c.hidden_dim));
        }
        if c.num_kv_heads == 0 || !c.num_heads.is_multiple_of(c.num_kv_heads) {
            return bad(format!("num_kv_heads ({}) must divide num_heads ({})", c.num_kv_heads, c.num_heads));
        }
        if c.head_dim() == 0 || !c.head_dim().is_multiple_of(2) {
            return bad(format!("head dim = {} must be even for RoPE, and > 0", c.head_dim()));
        }
        if c.architecture == Architecture::Qwen2 && (c.attention_bias || c.mlp_bias) {
            return bad("a Qwen2 model has biases on q, k and v only: attention_bias and mlp_bias must be false".into());
        }
        c.rope().check().map_err(|e| Error::Invalid(format!("model config: {e}")))?;
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
        let (c, f, q, kv) = (self.hidden_dim, self.intermediate_dim, self.q_dim(), self.kv_dim());
        let biases = if self.qkv_bias() { q + 2 * kv } else { 0 }
            + if self.o_bias() { c } else { 0 }
            + if self.mlp_bias { 2 * f + c } else { 0 };
        let layer = 2 * c * q + 2 * c * kv + 3 * c * f + 2 * c + biases;
        let out = if self.tie_weights { 0 } else { self.vocab_size * c };
        self.vocab_size * c + self.num_layers * layer + c + out
    }
}
