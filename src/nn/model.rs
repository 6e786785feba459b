//! GPTModel: tokens -> embedding -> N × TransformerBlock -> RMSNorm -> logits, named and laid
//! out like Hugging Face's `LlamaForCausalLM`.

use super::{ModelConfig, RmsNorm, TransformerBlock};
use crate::ops::{self, flat};
use crate::{bail, Device, Error, Precision, Result, Tensor};
use std::collections::HashMap;

/// A target the loss skips (a prompt token or padding in fine-tuning data).
pub const IGNORE_INDEX: u32 = u32::MAX;

type Getter<'a> = Box<dyn FnMut(&str, &[usize]) -> Result<Tensor> + 'a>;

/// Builds modules from named tensors and records them, in order, as the model's parameters.
pub struct Loader<'a> {
    get: Getter<'a>,
    params: Vec<(String, Tensor)>,
    /// Whether `get` gave a tensor that already tracks gradients (kept as it is).
    kept_graph: bool,
}

impl<'a> Loader<'a> {
    pub fn new(get: impl FnMut(&str, &[usize]) -> Result<Tensor> + 'a) -> Loader<'a> {
        Loader { get: Box::new(get), params: Vec::new(), kept_graph: false }
    }

    /// The parameter `name` of `shape`: a leaf that requires grad (a tensor that already
    /// tracks gradients is kept as it is, so a test can differentiate through a module).
    pub fn param(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = (self.get)(name, shape)?;
        if t.shape() != shape {
            bail!(Shape, "{name}: expected shape {shape:?}, got {:?}", t.shape());
        }
        self.kept_graph |= t.tracks_grad();
        let t = if t.tracks_grad() { t } else { t.detach().requires_grad_() };
        self.params.push((name.to_string(), t.clone()));
        Ok(t)
    }
}

/// Keys and values of the positions seen so far, one per layer: [B, T, Hkv, D] each. For one
/// sequence (B = 1) they live in buffers made for `capacity` positions, and each new position is
/// copied in at its place (no copy of the earlier ones); for a batch they are joined anew.
#[derive(Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Positions the buffers hold (0: join anew each time).
    capacity: usize,
}

impl KvCache {
    /// An empty cache that holds up to `capacity` positions of one sequence without copying.
    pub fn with_capacity(capacity: usize) -> KvCache {
        KvCache { capacity, ..Default::default() }
    }

    /// Appends the new positions and returns the whole keys and values.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let &[b, t, h, d] = k.shape() else {
            bail!(Shape, "kv cache: keys must be [B, T, H, D], got {:?}", k.shape());
        };
        if b != 1 || self.capacity == 0 || k.dtype() != Precision::FP32 || v.dtype() != Precision::FP32 {
            let (k, v) = match (self.k.take(), self.v.take()) {
                (Some(pk), Some(pv)) => (ops::concat(&[&pk, &k], 1)?, ops::concat(&[&pv, &v], 1)?),
                _ => (k, v),
            };
            self.len = k.shape()[1];
            self.k = Some(k.clone());
            self.v = Some(v.clone());
            return Ok((k, v));
        }
        if self.len + t > self.capacity {
            bail!(Invalid, "kv cache: {} positions cached and {t} more exceed its {}", self.len, self.capacity);
        }
        let device = k.device();
        let row = h * d;
        let mut views = Vec::with_capacity(2);
        for (slot, new) in [(&mut self.k, &k), (&mut self.v, &v)] {
            let buf = slot.get_or_insert_with(|| Tensor::zeros_on(&[1, self.capacity, h, d], Precision::FP32, device));
            let at = |n: usize, shape: &[usize]| {
                Tensor::from_storage(buf.storage().clone(), buf.offset() + n * row, shape, Precision::FP32)
            };
            ops::flat::copy_into(&at(self.len, new.shape()), new)?;
            views.push(at(0, &[1, self.len + t, h, d]));
        }
        self.len += t;
        let v = views.pop().expect("two views");
        Ok((views.pop().expect("two views"), v))
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct GPTModel {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<TransformerBlock>,
    pub norm: RmsNorm,
    /// None when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    params: Vec<(String, Tensor)>,
}

/// A seed for each parameter name, so initialisation does not depend on creation order.
fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl GPTModel {
    /// A freshly initialised model on the default device (seed 0).
    pub fn new(config: ModelConfig) -> Result<GPTModel> {
        GPTModel::new_on(config, Device::default_device(), 0)
    }

    /// Normal(0, 0.02) weights (residual projections scaled by 1/sqrt(2·layers)), unit norms.
    pub fn new_on(config: ModelConfig, device: Device, seed: u64) -> Result<GPTModel> {
        let residual_std = 0.02 / (2.0 * config.num_layers as f32).sqrt();
        let precision = config.precision;
        let model = GPTModel::load(config, |name, shape| {
            let t = if name.ends_with("norm.weight") {
                Tensor::full_on(shape, 1.0, device)
            } else {
                let std = if name.contains("o_proj") || name.contains("down_proj") { residual_std } else { 0.02 };
                Tensor::randn_on(shape, std, name_seed(seed, name), device)
            };
            ops::cast(&t, precision)
        })?;
        Ok(model)
    }

    /// Builds the model from `get(name, shape)`, called once per Hugging Face parameter name.
    /// On the GPU the parameters are then copied into one buffer (see `ops::flat`), so that the
    /// optimizer updates them all in one dispatch.
    pub fn load(config: ModelConfig, get: impl FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<GPTModel> {
        let (model, kept_graph) = GPTModel::build(config, get)?;
        let tensors: Vec<Tensor> = model.params.iter().map(|(_, t)| t.detach()).collect();
        let one_dtype = tensors.iter().all(|t| t.dtype() == tensors[0].dtype());
        if model.device() != Device::Gpu || kept_graph || !one_dtype {
            return Ok(model);
        }
        let mut packed: HashMap<&str, Tensor> =
            model.params.iter().map(|(n, _)| n.as_str()).zip(flat::pack(&tensors)?).collect();
        let (model, _) = GPTModel::build(model.config.clone(), |name, _| {
            packed
                .remove(name)
                .ok_or_else(|| Error::Invalid(format!("model load: parameter {name} was asked for twice")))
        })?;
        Ok(model)
    }

    /// The model from `get`, and whether `get` gave tensors that already track gradients.
    fn build(config: ModelConfig, get: impl FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<(GPTModel, bool)> {
        config.validate()?;
        let c = &config;
        let mut l = Loader::new(get);
        let embed_tokens = l.param("model.embed_tokens.weight", &[c.vocab_size, c.hidden_dim])?;
        let layers = (0..c.num_layers)
            .map(|i| TransformerBlock::load(&mut l, &format!("model.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&mut l, "model.norm", c.hidden_dim, c.norm_eps)?;
        let lm_head =
            if c.tie_weights { None } else { Some(l.param("lm_head.weight", &[c.vocab_size, c.hidden_dim])?) };
        let (params, kept_graph) = (l.params, l.kept_graph);
        Ok((GPTModel { config, embed_tokens, layers, norm, lm_head, params }, kept_graph))
    }

    /// Every parameter with its Hugging Face name, in a fixed order.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn parameter(&self, name: &str) -> Option<&Tensor> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The output projection [V, C] (the embedding when tied).
    pub fn output_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Stores every weight in BF16 (compute and gradients stay f32).
    pub fn to_bf16(&mut self) -> Result<()> {
        self.cast(Precision::BF16)
    }

    pub fn cast(&mut self, precision: Precision) -> Result<()> {
        let mut config = self.config.clone();
        config.precision = precision;
        let old = std::mem::take(&mut self.params);
        *self = GPTModel::load(config, |name, _| {
            let t = &old.iter().find(|(n, _)| n == name).expect("same names").1;
            crate::no_grad(|| ops::cast(t, precision))
        })?;
        Ok(())
    }

    /// Moves every weight to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        let old = std::mem::take(&mut self.params);
        *self = GPTModel::load(self.config.clone(), |name, _| {
            old.iter().find(|(n, _)| n == name).expect("same names").1.detach().to_device(device)
        })?;
        Ok(())
    }

    fn check_tokens(&self, op: &str, tokens: &Tensor, batch: usize, seq_len: usize, pos: usize) -> Result<()> {
        if tokens.dtype() != Precision::U32 || tokens.numel() != batch * seq_len {
            bail!(
                Shape,
                "{op}: tokens must be u32 with batch×seq_len = {batch}×{seq_len} elements, got {:?} {}",
                tokens.shape(),
                tokens.dtype().name()
            );
        }
        if pos + seq_len > self.config.max_seq_len {
            bail!(Shape, "{op}: positions up to {} exceed max_seq_len {}", pos + seq_len, self.config.max_seq_len);
        }
        Ok(())
    }

    /// Final hidden states [B*T, C]. `cache` (one per layer) carries keys and values across
    /// calls for generation; `dropout_seed` turns dropout on (training).
    pub fn hidden(
        &self,
        tokens: &Tensor,
        batch: usize,
        seq_len: usize,
        pos: usize,
        mut cache: Option<&mut [KvCache]>,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        self.check_tokens("forward", tokens, batch, seq_len, pos)?;
        let p = self.config.dropout;
        let dropout = dropout_seed.filter(|_| p > 0.0).map(|s| (p, s));
        let mut x = ops::embedding(&tokens.view(&[batch * seq_len])?, &self.embed_tokens)?;
        if let Some((p, s)) = dropout {
            x = ops::dropout(&x, p, s)?;
        }
        // The residual stream is x + pending; each add is fused into the norm that follows it.
        let mut pending: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| &mut c[i]);
            let d = dropout.map(|(p, s)| (p, s.wrapping_add(1000 * (i as u64 + 1))));
            let (nx, m) = layer.forward_residual(&x, pending.as_ref(), batch, seq_len, pos, c, d)?;
            (x, pending) = (nx, Some(m));
        }
        match pending {
            Some(m) => Ok(self.norm.add_forward(&x, &m)?.1),
            None => self.norm.forward(&x),
        }
    }

    /// Logits [B, T, V] for tokens [B, T] at positions pos_offset.. (the full logits; training
    /// uses `loss`, which never makes them).
    pub fn forward(&self, tokens: &Tensor, batch: usize, seq_len: usize, pos_offset: usize) -> Result<Tensor> {
        let h = self.hidden(tokens, batch, seq_len, pos_offset, None, None)?;
        ops::matmul_t(&h, self.output_weight(), false, true)?.view(&[batch, seq_len, self.config.vocab_size])
    }

    /// Mean next-token cross-entropy over the targets that are not `IGNORE_INDEX`, through the
    /// fused kernel (the logits never exist); 0, with zero gradients, when every target is.
    pub fn loss(
        &self,
        tokens: &Tensor,
        targets: &Tensor,
        batch: usize,
        seq_len: usize,
        dropout_seed: Option<u64>,
    ) -> Result<Tensor> {
        self.check_tokens("loss", targets, batch, seq_len, 0)?;
        let h = self.hidden(tokens, batch, seq_len, 0, None, dropout_seed)?;
        let targets = targets.view(&[batch * seq_len])?;
        ops::fused_linear_cross_entropy(&h, self.output_weight(), &targets, Some(IGNORE_INDEX))
    }

    /// One empty cache per layer.
    pub fn new_cache(&self) -> Vec<KvCache> {
        (0..self.config.num_layers).map(|_| KvCache::with_capacity(self.config.max_seq_len)).collect()
    }
}
