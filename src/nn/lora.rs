//! LoRA (Hu et al. 2021): a frozen linear layer plus a trained low-rank update,
//! y = x·Wᵀ + (alpha / r)·(dropout(x)·Aᵀ)·Bᵀ, with PEFT's names, init and files.

use crate::{bail, ops, Error, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The projections LoRA may adapt, by their short names (`--lora-targets`) and module names.
pub const TARGETS: [(&str, &str); 7] = [
    ("q", "q_proj"),
    ("k", "k_proj"),
    ("v", "v_proj"),
    ("o", "o_proj"),
    ("gate", "gate_proj"),
    ("up", "up_proj"),
    ("down", "down_proj"),
];

/// Which projections get adapters, and their rank, scale and dropout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    pub dropout: f32,
    /// Module names: q_proj, v_proj, ...
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// `--lora-targets`: short or module names, comma separated.
    pub fn parse_targets(list: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let Some(&(_, module)) = TARGETS.iter().find(|(s, m)| *s == t || *m == t) else {
                bail!(Invalid, "--lora-targets {list}: {t:?} is not one of q, k, v, o, gate, up, down");
            };
            if !out.iter().any(|m| m == module) {
                out.push(module.to_string());
            }
        }
        if out.is_empty() {
            bail!(Invalid, "--lora-targets {list:?}: name at least one of q, k, v, o, gate, up, down");
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!(Invalid, "--lora 0: the rank must be at least 1");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!(Invalid, "--lora-alpha {}: must be a finite number > 0", self.alpha);
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!(Invalid, "--lora-dropout {}: must be in [0, 1)", self.dropout);
        }
        for t in &self.targets {
            if !TARGETS.iter().any(|(_, m)| m == t) {
                bail!(
                    Invalid,
                    "LoRA target {t:?} is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                );
            }
        }
        Ok(())
    }

    /// The factor of the low-rank product: alpha / r (PEFT without rsLoRA).
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Adapter parameters on `model`: r·(in + out) for each adapted projection of each layer.
    pub fn num_params(&self, model: &super::ModelConfig) -> usize {
        let (c, f, q, kv) = (
            model.hidden_dim,
            model.intermediate_dim,
            model.num_heads * model.head_dim(),
            model.num_kv_heads * model.head_dim(),
        );
        let per_layer: usize = self
            .targets
            .iter()
            .map(|t| match t.as_str() {
                "q_proj" => c + q,
                "k_proj" | "v_proj" => c + kv,
                "o_proj" => q + c,
                _ => c + f,
            })
            .sum();
        model.num_layers * self.rank * per_layer
    }

    /// Whether the layer named `name` (`model.layers.3.self_attn.q_proj`) gets an adapter.
    pub fn adapts(&self, name: &str) -> bool {
        self.targets.iter().any(|t| name.rsplit('.').next() == Some(t.as_str()))
    }

    /// PEFT's adapter_config.json for these adapters on the model at `base`.
    pub fn to_peft_json(&self, base: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "rank_pattern": {},
            "alpha_pattern": {},
        })
    }

    /// Reads PEFT's adapter_config.json; what these adapters cannot reproduce is an error naming
    /// the field.
    pub fn from_peft_json(v: &serde_json::Value) -> Result<LoraConfig> {
        let bad = |field: &str, why: &str| {
            let value = v.get(field).map_or("".into(), |x| x.to_string());
            Error::Invalid(format!("adapter_config.json: {field} = {value}: {why}"))
        };
        if v.get("peft_type").and_then(|x| x.as_str()) != Some("LORA") {
            return Err(bad("peft_type", "only LORA adapters load"));
        }
        let on = |k: &str| v.get(k).is_some_and(|x| x.as_bool() == Some(true));
        for field in ["use_rslora", "use_dora", "fan_in_fan_out"] {
            if on(field) {
                return Err(bad(field, "not supported"));
            }
        }
        for field in ["rank_pattern", "alpha_pattern"] {
            if v.get(field).and_then(|x| x.as_object()).is_some_and(|o| !o.is_empty()) {
                return Err(bad(field, "per-layer ranks or alphas are not supported"));
            }
        }
        if v.get("bias").and_then(|x| x.as_str()).is_some_and(|b| b != "none") {
            return Err(bad("bias", "trained biases are not supported"));
        }
        let unsupported = ["layers_to_transform", "modules_to_save", "exclude_modules", "trainable_token_indices"];
        for field in unsupported.into_iter().chain(["target_parameters", "layer_replication"]) {
            if v.get(field).is_some_and(|x| !x.is_null()) {
                return Err(bad(field, "not supported"));
            }
        }
        let rank = v.get("r").and_then(|x| x.as_u64()).ok_or_else(|| bad("r", "an integer rank is needed"))?;
        let targets = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            Some(serde_json::Value::String(s)) => LoraConfig::parse_targets(s)?,
            _ => return Err(bad("target_modules", "a list of module names is needed")),
        };
        let c = LoraConfig {
            rank: rank as usize,
            alpha: v.get("lora_alpha").and_then(|x| x.as_f64()).unwrap_or(8.0) as f32,
            dropout: v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
            targets,
        };
        c.validate()?;
        Ok(c)
    }
}

/// The trained update of one linear layer: A [r, in], B [out, r].
#[derive(Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f32,
    pub dropout: f32,
}

impl Lora {
    /// scale·(dropout(x)·Aᵀ)·Bᵀ for x: [N, in] -> [N, out]; `seed` turns dropout on (training).
    pub fn delta(&self, x: &Tensor, seed: Option<u64>) -> Result<Tensor> {
        let x = match seed {
            Some(s) if self.dropout > 0.0 => ops::dropout(x, self.dropout, s)?,
            _ => x.clone(),
        };
        let down = ops::matmul_t(&x, &self.a, false, true)?; // [N, r]
        ops::scale(&ops::matmul_t(&down, &self.b, false, true)?, self.scale)
    }

    /// W + scale·B·A: the weight with the update folded in, in W's precision.
    pub fn merged(&self, weight: &Tensor) -> Result<Tensor> {
        crate::no_grad(|| {
            let ba = ops::matmul_t(&self.b, &self.a, false, false)?;
            let w = ops::cast(weight, crate::Precision::FP32)?;
            ops::cast(&ops::add(&w, &ops::scale(&ba, self.scale)?)?, weight.dtype())
        })
    }
}

/// PEFT's name of an adapter tensor: `base_model.model.` + ours.
pub fn peft_name(ours: &str) -> String {
    format!("base_model.model.{ours}")
}
