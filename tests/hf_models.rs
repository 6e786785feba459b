//! The Llama family as transformers defines it: fixtures made by transformers (llama3 RoPE
//! scaling with head_dim != hidden/heads in BF16, Qwen2 with q/k/v biases, Llama with every
//! bias and linear scaling in F16) give transformers' logits, loss and gradients on every device;
//! their configs and weights round-trip through save_pretrained / from_pretrained.

mod common;
use irontensor::infer::{generate, SamplingConfig};
use irontensor::nn::{Architecture, GPTModel, ModelConfig};
use irontensor::{Device, Precision, RopeScaling, Tensor};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    let flat = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        match v.as_array() {
            Some(a) if a.first().is_some_and(|x| x.is_array()) => {
                a.iter().flat_map(|r| r.as_array().unwrap().clone()).collect()
            }
            Some(a) => a.clone(),
            None => vec![v.clone()],
        }
    };
    flat(v).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// max |got - want| <= atol + rtol·max |want|.
fn close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= atol + rtol * scale, "{what}: max error {err} against values up to {scale}");
}

/// Logits of tokens[..n-1], the loss of tokens[1..] and the gradients expected.json lists,
/// against transformers' (f32 on the stored weights).
fn matches_transformers(name: &str, device: Device) -> GPTModel {
    let dir = fixture(name);
    let m = GPTModel::from_pretrained(&dir, device).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tokens: Vec<u32> = want["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let n = tokens.len() - 1;
    let x = Tensor::from_u32_on(&tokens[..n], &[1, n], device).unwrap();
    let y = Tensor::from_u32_on(&tokens[1..], &[1, n], device).unwrap();
    let what = format!("{name} on {device:?}");
    let logits = irontensor::no_grad(|| m.forward(&x, 1, n, 0)).unwrap().to_vec();
    close(&logits, &floats(&want["logits"]), 1e-5, 1e-5, &format!("{what}: logits"));
    let loss = m.loss(&x, &y, 1, n, None).unwrap();
    close(&loss.to_vec(), &[want["loss"].as_f64().unwrap() as f32], 1e-5, 1e-5, &format!("{what}: loss"));
    let grads = loss.backward().unwrap();
    for (param, g) in want["grads"].as_object().unwrap() {
        let p = m.parameter(param).unwrap_or_else(|| panic!("{what}: no parameter {param}"));
        let got = grads.get(p).unwrap_or_else(|| panic!("{what}: no gradient for {param}")).to_vec();
        close(&got, &floats(g), 1e-5, 1e-4, &format!("{what}: gradient of {param}"));
    }
    let stored: usize = m.parameters().iter().map(|(_, t)| t.numel()).sum();
    assert_eq!(stored, m.config.num_params(), "{what}: num_params");
    // Greedy decoding with the KV cache (one position at a time, past the original context of
    // a scaled RoPE) picks what the full forward picks at every step.
    let cfg = SamplingConfig { temperature: 0.0, max_tokens: 14, ..Default::default() };
    let cached = generate(&m, &tokens[..9], &cfg, &[], true, |_| {}).unwrap();
    let mut ids = tokens[..9].to_vec();
    for &next in &cached {
        let x = Tensor::from_u32_on(&ids, &[1, ids.len()], device).unwrap();
        let logits = irontensor::no_grad(|| m.forward(&x, 1, ids.len(), 0)).unwrap().to_vec();
        let last = &logits[(ids.len() - 1) * m.config.vocab_size..];
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        assert_eq!(next as usize, best, "{what}: cached greedy token at position {}", ids.len());
        ids.push(next);
    }
    m
}

fn llama3(device: Device) {
    let m = matches_transformers("llama3-tiny", device);
    let c = &m.config;
    assert_eq!((c.head_dim(), c.explicit_head_dim, c.precision), (12, Some(12), Precision::BF16));
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 16, .. }));
    let q = m.parameter("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!((q.shape(), q.dtype()), (&[48, 32][..], Precision::BF16), "BF16 weights stay BF16");
    assert_eq!(m.parameter("model.layers.0.self_attn.o_proj.weight").unwrap().shape(), &[32, 48]);
    assert!(m.parameter("lm_head.weight").is_some());
}

fn qwen2(device: Device) {
    let m = matches_transformers("qwen2-tiny", device);
    assert_eq!(m.config.architecture, Architecture::Qwen2);
    assert!(m.config.tie_weights && m.parameter("lm_head.weight").is_none());
    assert_eq!(m.parameter("model.layers.1.self_attn.k_proj.bias").unwrap().shape(), &[16]);
    assert!(m.parameter("model.layers.1.self_attn.o_proj.bias").is_none(), "Qwen2 has no o_proj bias");
    // On the GPU the q, k, v weights, and their biases, lie one after another in the flat
    // parameter buffer (views start at multiples of 64 elements, as real models' widths are):
    // the fused projection joins them without a copy.
    if device == Device::Gpu {
        let c = ModelConfig {
            vocab_size: 64,
            hidden_dim: 128,
            num_heads: 2,
            num_kv_heads: 1,
            num_layers: 1,
            architecture: Architecture::Qwen2,
            ..ModelConfig::tiny()
        };
        let m = GPTModel::new_on(c, device, 0).unwrap();
        for part in ["weight", "bias"] {
            let p = |n: &str| m.parameter(&format!("model.layers.0.self_attn.{n}_proj.{part}")).unwrap().clone();
            let (q, k, v) = (p("q"), p("k"), p("v"));
            let joined = irontensor::ops::concat(&[&q, &k, &v], 0).unwrap();
            assert!(joined.shares_storage(&q), "q, k, v: the {part}s are copied to be joined");
        }
    }
}

fn llama_biases_f16(device: Device) {
    let m = matches_transformers("llama-bias-tiny", device);
    let c = &m.config;
    assert!(c.attention_bias && c.mlp_bias && c.rope_scaling == RopeScaling::Linear { factor: 4.0 });
    // F16 loads as FP32, exactly: every f16 value is an f32.
    assert_eq!(c.precision, Precision::FP32);
    let b = m.parameter("model.layers.0.mlp.down_proj.bias").unwrap();
    assert!(b.to_vec().iter().all(|v| half::f16::from_f32(*v).to_f32() == *v && *v != 0.0));
}

/// save_pretrained then from_pretrained: the same config (every field), names and logits; and
/// config.json as transformers reads it (architecture, biases, rope_scaling, head_dim).
fn round_trip(device: Device) {
    for name in ["llama3-tiny", "qwen2-tiny", "llama-bias-tiny"] {
        let m = GPTModel::from_pretrained(fixture(name), device).unwrap();
        let dir = std::env::temp_dir().join(format!("irontensor_hf_{name}_{}_{device:?}", std::process::id()));
        m.save_pretrained(&dir).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let back = GPTModel::from_pretrained(&dir, device).unwrap();
        assert_eq!(back.config, m.config, "{name}");
        assert_eq!(ModelConfig::from_hf_json(&m.config.to_hf_json()).unwrap(), m.config, "{name}");
        let names = |m: &GPTModel| m.parameters().iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&back), names(&m), "{name}");
        let ids = Tensor::from_u32_on(&[3, 1, 4, 1, 5, 9, 2, 6, 5, 35, 89], &[1, 11], device).unwrap();
        assert_eq!(back.forward(&ids, 1, 11, 0).unwrap().to_vec(), m.forward(&ids, 1, 11, 0).unwrap().to_vec());
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(name).join("config.json")).unwrap()).unwrap();
        for k in ["model_type", "head_dim", "tie_word_embeddings", "num_key_value_heads", "attention_bias", "mlp_bias"]
        {
            if !original[k].is_null() {
                assert_eq!(json[k], original[k], "{name}: {k}");
            }
        }
        assert_eq!(json["architectures"], original["architectures"], "{name}");
        let rope = &original["rope_parameters"];
        match rope["rope_type"].as_str().unwrap() {
            "default" => assert!(json["rope_scaling"].is_null(), "{name}"),
            _ => assert_eq!(json["rope_scaling"]["factor"], rope["factor"], "{name}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

device_tests!(llama3, qwen2, llama_biases_f16, round_trip);

/// `irontensor train --init` with the transformers folders (their own tokenizers, one whose
/// end-of-text token is not <|endoftext|>): 3 steps, then `generate` from the run; the run's
/// checkpoint keeps the architecture, RoPE scaling, head_dim and biases.
#[test]
fn cli_trains_and_generates_from_transformers_folders() {
    let root = std::env::temp_dir().join(format!("irontensor_hf_cli_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let text = std::fs::read_to_string(fixture("../data/tinyshakespeare.txt")).unwrap();
    let data = root.join("slice.txt");
    std::fs::write(&data, &text[..20000]).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_irontensor"));
        cmd.args(args).env_remove("IRONTENSOR_DEVICE").env("IRONTENSOR_CACHE_DIR", "off");
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "irontensor {args:?}:\n{text}");
        text
    };
    for name in ["llama3-tiny", "qwen2-tiny"] {
        let out = root.join(name);
        let (init, data, out_s) = (fixture(name), data.to_str().unwrap(), out.to_str().unwrap());
        let flags = ["--data", data, "--device", "cpu", "--steps", "3", "--batch", "2", "--seq", "16"];
        let text = run(&[&["train", "--init", init.to_str().unwrap(), "--out", out_s][..], &flags[..]].concat());
        assert!(text.contains("the --init model's (272 tokens)") && text.contains("done: 3 steps"), "{text}");
        let greedy = ["--prompt", "ROMEO:", "--max-tokens", "8", "--temperature", "0", "--device", "cpu"];
        let text = run(&[&["generate", "--checkpoint", out_s][..], &greedy[..]].concat());
        assert!(text.starts_with("ROMEO:") && text.contains("generated: "), "{text}");
        let ckpt = std::fs::read_dir(out.join("checkpoints")).unwrap().flatten().map(|e| e.path()).max().unwrap();
        let trained = GPTModel::from_pretrained(&ckpt, Device::Cpu).unwrap();
        let original = GPTModel::from_pretrained(init, Device::Cpu).unwrap();
        assert_eq!(trained.config, original.config, "{name}");
    }
    std::fs::remove_dir_all(&root).ok();
}
