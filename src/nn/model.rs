//! GPTModel: tokens -> embedding -> N × TransformerBlock -> RMSNorm -> logits, named and laid
//! out like Hugging Face's `LlamaForCausalLM`.

use super::{KvCache, Lora, LoraConfig, ModelConfig, RmsNorm, TransformerBlock};
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
    /// LoRA adapters to make: the base weights are then frozen.
    lora: Option<LoraConfig>,
}

impl<'a> Loader<'a> {
    pub fn new(get: impl FnMut(&str, &[usize]) -> Result<Tensor> + 'a) -> Loader<'a> {
        Loader { get: Box::new(get), params: Vec::new(), kept_graph: false, lora: None }
    }

    /// The parameter `name` of `shape`: a leaf that requires grad, or a frozen one under LoRA
    /// (a tensor that already tracks gradients is kept as it is, so a test can differentiate
    /// through a module).
    pub fn param(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let frozen = self.lora.is_some();
        self.take(name, shape, !frozen)
    }

    fn take(&mut self, name: &str, shape: &[usize], trained: bool) -> Result<Tensor> {
        let t = (self.get)(name, shape)?;
        if t.shape() != shape {
            bail!(Shape, "{name}: expected shape {shape:?}, got {:?}", t.shape());
        }
        self.kept_graph |= t.tracks_grad();
        let t = match (t.tracks_grad(), trained) {
            (true, _) => t,
            (false, true) => t.detach().requires_grad_(),
            (false, false) => t.detach(),
        };
        self.params.push((name.to_string(), t.clone()));
        Ok(t)
    }

    /// The LoRA adapter of the linear layer `name` ([out, inp]), if the config adapts it:
    /// `{name}.lora_A.weight` [r, inp] and `{name}.lora_B.weight` [out, r], trained.
    pub fn lora(&mut self, name: &str, inp: usize, out: usize) -> Result<Option<Lora>> {
        let Some(c) = self.lora.clone().filter(|c| c.adapts(name)) else { return Ok(None) };
        let a = self.take(&format!("{name}.lora_A.weight"), &[c.rank, inp], true)?;
        let b = self.take(&format!("{name}.lora_B.weight"), &[out, c.rank], true)?;
        Ok(Some(Lora { a, b, scale: c.scale(), dropout: c.dropout }))
    }
}

pub struct GPTModel {
    pub config: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<TransformerBlock>,
    pub norm: RmsNorm,
    /// None when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// LoRA adapters on the projections it names: the other weights are then frozen.
    pub lora: Option<LoraConfig>,
    /// Keep only each block's inputs in a training forward and recompute the block in the
    /// backward pass (`autograd::checkpoint`): less memory for about one more forward.
    pub checkpoint_activations: bool,
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
        GPTModel::load_with(config, None, get)
    }

    /// `load` with LoRA adapters (`{layer}.lora_A.weight`, `{layer}.lora_B.weight` from `get`
    /// too) on the layers `lora` names, and every other weight frozen. On the GPU the frozen
    /// weights and the adapters are packed apart (each set of one dtype in one buffer).
    pub fn load_with(
        config: ModelConfig,
        lora: Option<LoraConfig>,
        get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<GPTModel> {
        let (model, kept_graph) = GPTModel::build(config, lora, get)?;
        if model.device() != Device::Gpu || kept_graph {
            return Ok(model);
        }
        let mut packed: HashMap<&str, Tensor> = HashMap::new();
        let mut groups: Vec<Vec<&(String, Tensor)>> = Vec::new();
        for p in &model.params {
            let key = |q: &(String, Tensor)| (q.1.requires_grad(), q.1.dtype());
            match groups.iter_mut().find(|g| key(g[0]) == key(p)) {
                Some(g) => g.push(p),
                None => groups.push(vec![p]),
            }
        }
        for g in groups {
            let tensors: Vec<Tensor> = g.iter().map(|(_, t)| t.detach()).collect();
            packed.extend(g.iter().map(|(n, _)| n.as_str()).zip(flat::pack(&tensors)?));
        }
        let (model, _) = GPTModel::build(model.config.clone(), model.lora.clone(), |name, _| {
            packed
                .remove(name)
                .ok_or_else(|| Error::Invalid(format!("model load: parameter {name} was asked for twice")))
        })?;
        Ok(model)
    }

    /// The model from `get`, and whether `get` gave tensors that already track gradients.
    fn build(
        config: ModelConfig,
        lora: Option<LoraConfig>,
        get: impl FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<(GPTModel, bool)> {
        config.validate()?;
        if let Some(l) = &lora {
            l.validate()?;
        }
        let c = &config;
        let mut l = Loader::new(get);
        l.lora = lora.clone();
        let embed_tokens = l.param("model.embed_tokens.weight", &[c.vocab_size, c.hidden_dim])?;
        let layers = (0..c.num_layers)
            .map(|i| TransformerBlock::load(&mut l, &format!("model.layers.{i}"), c))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&mut l, "model.norm", c.hidden_dim, c.norm_eps)?;
        let lm_head =
            if c.tie_weights { None } else { Some(l.param("lm_head.weight", &[c.vocab_size, c.hidden_dim])?) };
        let (params, kept_graph) = (l.params, l.kept_graph);
        let checkpoint_activations = false;
        Ok((GPTModel { config, embed_tokens, layers, norm, lm_head, lora, checkpoint_activations, params }, kept_graph))
    }

    /// This model with new LoRA adapters on the layers `lora` names and every other weight
    /// frozen: A as PEFT makes it (uniform in ±1/sqrt(in), seeded by name), B zero, so the
    /// model computes what it did.
    pub fn with_lora(self, lora: LoraConfig, seed: u64) -> Result<GPTModel> {
        if self.lora.is_some() {
            bail!(Invalid, "with_lora: this model already has LoRA adapters");
        }
        let device = self.device();
        let mut old = self.params;
        GPTModel::load_with(self.config, Some(lora), |name, shape| {
            if let Some(i) = old.iter().position(|(n, _)| n == name) {
                return Ok(old.swap_remove(i).1.detach());
            }
            Ok(match name.ends_with("lora_A.weight") {
                true => {
                    let bound = 1.0 / (shape[1] as f32).sqrt();
                    Tensor::uniform_on(shape, -bound, bound, name_seed(seed, name), device)
                }
                false => Tensor::zeros_on(shape, Precision::FP32, device),
            })
        })
    }

    /// The parameters that train: all of them, or only the LoRA adapters when there are some.
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.params.iter().filter(|(_, t)| self.lora.is_none() || t.requires_grad()).cloned().collect()
    }

    /// This model with each adapter folded into its weight (W + scale·B·A) and none left.
    pub fn merged(self) -> Result<GPTModel> {
        if self.lora.is_none() {
            return Ok(self);
        }
        let mut merged: HashMap<String, Tensor> = HashMap::new();
        let linears = self.layers.iter().enumerate().flat_map(|(i, l)| {
            let a = &l.self_attn;
            let m = &l.mlp;
            let named = [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &m.gate_proj),
                ("mlp.up_proj", &m.up_proj),
                ("mlp.down_proj", &m.down_proj),
            ];
            named.map(|(n, lin)| (format!("model.layers.{i}.{n}.weight"), lin))
        });
        for (name, lin) in linears {
            if let Some(lora) = &lin.lora {
                merged.insert(name, lora.merged(&lin.weight)?);
            }
        }
        let old = self.params;
        GPTModel::load(self.config, |name, _| match merged.remove(name) {
            Some(t) => Ok(t),
            None => Ok(old.iter().find(|(n, _)| n == name).expect("same names").1.detach()),
        })
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
        let checkpoint_activations = self.checkpoint_activations;
        // Only the weights: LoRA adapters stay f32 (they are the trained master copy).
        *self = GPTModel::load_with(config, self.lora.clone(), |name, _| {
            let t = &old.iter().find(|(n, _)| n == name).expect("same names").1;
            match name.contains(".lora_") {
                true => Ok(t.detach()),
                false => crate::no_grad(|| ops::cast(t, precision)),
            }
        })?;
        self.checkpoint_activations = checkpoint_activations;
        Ok(())
    }

    /// Moves every weight to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        let old = std::mem::take(&mut self.params);
        let checkpoint_activations = self.checkpoint_activations;
        *self = GPTModel::load_with(self.config.clone(), self.lora.clone(), |name, _| {
            old.iter().find(|(n, _)| n == name).expect("same names").1.detach().to_device(device)
        })?;
        self.checkpoint_activations = checkpoint_activations;
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
        // While training: (p, seed), p possibly 0 (the seed also draws LoRA's dropout).
        let dropout = dropout_seed.map(|s| (p, s));
        let mut x = ops::embedding(&tokens.view(&[batch * seq_len])?, &self.embed_tokens)?;
        if let Some((p, s)) = dropout.filter(|(p, _)| *p > 0.0) {
            x = ops::dropout(&x, p, s)?;
        }
        // Only a forward that records a graph has activations to spare; parameters that are
        // themselves outputs of a graph (a test differentiating through the model) are not leaves
        // the checkpoint could take as inputs.
        let checkpoint = self.checkpoint_activations
            && cache.is_none()
            && crate::autograd::is_grad_enabled()
            && self.params.iter().all(|(_, p)| p.requires_grad() || !p.tracks_grad());
        // The residual stream is x + pending; each add is fused into the norm that follows it.
        let mut pending: Option<Tensor> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| &mut c[i]);
            let d = dropout.map(|(p, s)| (p, s.wrapping_add(1000 * (i as u64 + 1))));
            let (nx, m) = match checkpoint {
                true => self.checkpointed_block(i, &x, pending.as_ref(), batch, seq_len, pos, d)?,
                false => layer.forward_residual(&x, pending.as_ref(), batch, seq_len, pos, c, d)?,
            };
            (x, pending) = (nx, Some(m));
        }
        match pending {
            Some(m) => Ok(self.norm.add_forward(&x, &m)?.1),
            None => self.norm.forward(&x),
        }
    }

    /// Block `i`'s `forward_residual` as one checkpoint node: it keeps (x, pending) and the
    /// block's parameters that require grad (the inputs of the node, so they get gradients).
    #[allow(clippy::too_many_arguments)]
    fn checkpointed_block(
        &self,
        i: usize,
        x: &Tensor,
        pending: Option<&Tensor>,
        b: usize,
        t: usize,
        pos: usize,
        dropout: Option<(f32, u64)>,
    ) -> Result<(Tensor, Tensor)> {
        let prefix = format!("model.layers.{i}.");
        let params = self.params.iter().filter(|(n, p)| n.starts_with(&prefix) && p.requires_grad()).map(|(_, p)| p);
        let inputs: Vec<&Tensor> = std::iter::once(x).chain(pending).chain(params).collect();
        let (layer, has_pending) = (self.layers[i].clone(), pending.is_some());
        let outs = crate::autograd::checkpoint("checkpoint(transformer block)", &inputs, move |a| {
            let (x, m) = layer.forward_residual(&a[0], has_pending.then(|| &a[1]), b, t, pos, None, dropout)?;
            Ok(vec![x, m])
        })?;
        let [x, m]: [Tensor; 2] = outs.try_into().unwrap_or_else(|_| unreachable!("the block gives (x, pending)"));
        Ok((x, m))
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
