//! Writes a random GQA model in Hugging Face layout plus our logits for fixed tokens, for
//! `dev/hf_compare.py` to check against transformers' LlamaForCausalLM.
//! Usage: cargo run --release --example export_for_hf -- OUT_DIR

use irontensor::nn::{GPTModel, ModelConfig};
use irontensor::train::checkpoint::save_tensors;
use irontensor::{Device, Precision, Tensor};

fn main() -> irontensor::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "hf_export".into());
    let config = ModelConfig {
        vocab_size: 300,
        hidden_dim: 64,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 96,
        max_seq_len: 64,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    };
    // Larger-than-default weights, so that attention patterns and RoPE really matter.
    let model = GPTModel::load(config.clone(), |name, shape| {
        let std = if name.ends_with("norm.weight") { 0.3 } else { 0.2 };
        let base = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        let seed = name.len() as u64 * 7919 + name.bytes().map(u64::from).sum::<u64>();
        let t = Tensor::randn_on(shape, std, seed, Device::Cpu).to_vec();
        Tensor::from_f32_on(&t.iter().map(|v| v + base).collect::<Vec<_>>(), shape, Device::Cpu)
    })?;
    model.save_pretrained(&dir)?;
    let ids: Vec<u32> = (0..2 * 37).map(|i| (i * 131 + 7) % 300).collect();
    let tokens = Tensor::from_u32_on(&ids, &[2, 37], Device::Cpu)?;
    let logits = model.forward(&tokens, 2, 37, 0)?;
    save_tensors(
        &std::path::Path::new(&dir).join("expected.safetensors"),
        &[("tokens".into(), tokens), ("logits".into(), logits)],
    )?;
    println!("wrote {dir}: config.json, model.safetensors, expected.safetensors");
    Ok(())
}
