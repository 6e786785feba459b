//! LoRA: PEFT's adapter (tests/fixtures/llama-tiny-lora, made by dev/make_lora_fixture.py) gives
//! PEFT's logits, loss and gradients; merging, saving and loading keep them; training moves the
//! adapters alone and resumes exactly; the CLI trains, generates and exports a LoRA run.

mod common;

use irontensor::nn::{GPTModel, LoraConfig};
use irontensor::train::{OptimizerKind, Trainer, TrainingConfig};
use irontensor::{Device, Tensor};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("irontensor-lora-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("llama-tiny-lora/expected.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    let flat = |x: &serde_json::Value| match x.as_array() {
        Some(row) => row.iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(),
        None => vec![x.as_f64().unwrap()],
    };
    v.as_array().unwrap().iter().flat_map(flat).collect()
}

fn peft_model(device: Device) -> GPTModel {
    let base = GPTModel::from_pretrained(fixtures().join("llama-tiny"), device).unwrap();
    base.with_adapter(fixtures().join("llama-tiny-lora")).unwrap()
}

fn logits(m: &GPTModel, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::from_u32_on(ids, &[1, ids.len()], m.device()).unwrap();
    irontensor::no_grad(|| m.forward(&t, 1, ids.len(), 0)).unwrap().to_vec()
}

fn tokens() -> Vec<u32> {
    expected()["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn peft_logits_loss_and_gradients(device: Device) {
    let want = expected();
    let m = peft_model(device);
    let ids = tokens();
    common::assert_close(&logits(&m, &ids), &floats(&want["logits"]), 1e-5, 1e-4, "logits with PEFT's adapter");
    // PEFT's loss with labels = the tokens: the mean over the T - 1 next tokens.
    let t = ids.len() - 1;
    let x = Tensor::from_u32_on(&ids[..t], &[1, t], device).unwrap();
    let y = Tensor::from_u32_on(&ids[1..], &[1, t], device).unwrap();
    let loss = m.loss(&x, &y, 1, t, None).unwrap();
    let l = loss.item().unwrap() as f64;
    assert!((l - want["loss"].as_f64().unwrap()).abs() < 1e-5, "loss {l} vs PEFT's {}", want["loss"]);
    let grads = loss.backward().unwrap();
    // The frozen weights get no gradient at all; the adapters PEFT's.
    assert_eq!(grads.len(), m.trainable().len());
    for (name, g) in want["grads"].as_object().unwrap() {
        let ours = name.strip_prefix("base_model.model.").unwrap();
        let p = m.parameter(ours).unwrap_or_else(|| panic!("no parameter {ours}"));
        let got = grads.get(p).unwrap().to_vec();
        common::assert_close(&got, &floats(g), 1e-6, 1e-3, &format!("d {ours}"));
    }
}

fn merged_model_computes_the_same(device: Device) {
    let m = peft_model(device);
    let ids = tokens();
    let before = logits(&m, &ids);
    let merged = m.merged().unwrap();
    assert!(merged.lora.is_none() && merged.parameters().iter().all(|(n, _)| !n.contains("lora")));
    common::assert_close(&logits(&merged, &ids), &common::f64s(&before), 1e-5, 1e-4, "merged logits");
}

#[test]
fn saved_adapters_read_back_as_peft_writes_them() {
    let m = peft_model(Device::Cpu);
    let dir = tmp("save");
    m.save_adapter(&dir, "some/base").unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (json["peft_type"].as_str(), json["r"].as_u64(), json["lora_alpha"].as_f64()),
        (Some("LORA"), Some(4), Some(12.0))
    );
    assert_eq!(json["base_model_name_or_path"], "some/base");
    // The same tensor names as PEFT's file.
    let names = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let mut n: Vec<String> =
            safetensors::SafeTensors::deserialize(&bytes).unwrap().names().into_iter().map(String::from).collect();
        n.sort();
        n
    };
    let peft = fixtures().join("llama-tiny-lora/adapter_model.safetensors");
    assert_eq!(names(&dir.join("adapter_model.safetensors")), names(&peft));
    let base = GPTModel::from_pretrained(fixtures().join("llama-tiny"), Device::Cpu).unwrap();
    let back = base.with_adapter(&dir).unwrap();
    assert_eq!(logits(&back, &tokens()), logits(&m, &tokens()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_name() {
    let dir = tmp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixtures().join("llama-tiny-lora");
    std::fs::copy(src.join("adapter_model.safetensors"), dir.join("adapter_model.safetensors")).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap()).unwrap();
    let base = || GPTModel::from_pretrained(fixtures().join("llama-tiny"), Device::Cpu).unwrap();
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("r", 8.into(), "lora_A.weight"),
        ("use_dora", true.into(), "use_dora"),
        ("target_modules", serde_json::json!(["v_proj", "o_proj", "up_proj", "down_proj"]), "has no place for"),
        ("peft_type", "IA3".into(), "peft_type"),
    ];
    for (field, value, want) in cases {
        let mut c = cfg.clone();
        c[field] = value;
        std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
        let e = base().with_adapter(&dir).map(|_| ()).expect_err(field).to_string();
        assert!(e.contains(want), "{field}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn lora_training(device: Device, base_model: Option<String>, dir: &Path) -> TrainingConfig {
    TrainingConfig {
        learning_rate: 1e-2,
        warmup_steps: 0,
        total_steps: 6,
        optimizer: OptimizerKind::AdamW,
        checkpoint_dir: dir.display().to_string(),
        lora: Some(LoraConfig {
            rank: 3,
            alpha: 6.0,
            dropout: 0.1,
            targets: LoraConfig::parse_targets("k,o,gate,down").unwrap(),
        }),
        base_model,
        async_gpu: device == Device::Gpu,
        ..Default::default()
    }
}

/// Trains adapters on the fixture: the frozen weights stay as they were, the loss falls, only the
/// adapters have optimizer state, and a resumed checkpoint (adapters alone, naming the base)
/// continues exactly as the uninterrupted run.
fn training_moves_only_the_adapters_and_resumes_exactly(device: Device) {
    let dir = tmp(&format!("train-{device:?}"));
    let base_path = fixtures().join("llama-tiny");
    let base = GPTModel::from_pretrained(&base_path, device).unwrap();
    let frozen: Vec<(String, Vec<f32>)> = base.parameters().iter().map(|(n, t)| (n.clone(), t.to_vec())).collect();
    let cfg = lora_training(device, Some(base_path.display().to_string()), &dir);
    let mut t = Trainer::with_model(base, cfg).unwrap();
    let ids: Vec<u32> = (0..4 * 17 + 2).map(|i| ((i * 7 + i / 5) % 60) as u32).collect();
    let (b, s) = (4, 16);
    let batch = |k: usize| -> (Vec<u32>, Vec<u32>) {
        let x = (0..b).flat_map(|r| ids[r * 17 + k % 2..r * 17 + k % 2 + s].to_vec()).collect();
        let y = (0..b).flat_map(|r| ids[r * 17 + k % 2 + 1..r * 17 + k % 2 + 1 + s].to_vec()).collect();
        (x, y)
    };
    let mut losses = Vec::new();
    for k in 0..3 {
        let (x, y) = batch(k);
        losses.push(t.train_step(&x, &y, b, s).unwrap().0);
    }
    let ckpt = t.save_numbered().unwrap();
    let files: Vec<String> =
        std::fs::read_dir(&ckpt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(
        files.contains(&"adapter_model.safetensors".into()) && !files.contains(&"model.safetensors".into()),
        "{files:?}"
    );
    let mut rest = Vec::new();
    for k in 3..6 {
        let (x, y) = batch(k);
        rest.push(t.train_step(&x, &y, b, s).unwrap().0);
    }
    assert!(rest[2] < losses[0] * 0.97, "the loss did not fall: {losses:?} {rest:?}");
    for (name, before) in &frozen {
        assert_eq!(&t.model.parameter(name).unwrap().to_vec(), before, "{name} changed");
    }
    let adapters = t.model.trainable().len();
    assert_eq!(adapters, 2 * 4 * 2, "two layers × four targets × (A, B)");
    let mut resumed = Trainer::load_checkpoint(&ckpt, device).unwrap();
    assert_eq!(resumed.model.trainable().len(), adapters);
    let mut again = Vec::new();
    for k in 3..6 {
        let (x, y) = batch(k);
        again.push(resumed.train_step(&x, &y, b, s).unwrap().0);
    }
    assert_eq!(again, rest, "the resumed run differs");
    std::fs::remove_dir_all(&dir).unwrap();
}

device_tests!(
    peft_logits_loss_and_gradients,
    merged_model_computes_the_same,
    training_moves_only_the_adapters_and_resumes_exactly
);

fn irontensor(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irontensor"))
        .args(args)
        .env("IRONTENSOR_DEVICE", "cpu")
        .env("IRONTENSOR_CACHE_DIR", "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "irontensor {args:?} failed:\n{text}");
    text
}

/// `train --init --lora`, then `generate` on the run, `generate --adapter`, and `export --merge
/// --out`, whose folder computes what the adapted model does.
#[test]
fn cli_trains_generates_and_exports_a_lora_run() {
    let root = tmp("cli");
    let base = root.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixtures().join("llama-tiny").join(f), base.join(f)).unwrap();
    }
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tinyshakespeare.txt")).unwrap();
    let text: String = text.chars().take(20_000).collect();
    irontensor::data::Tokenizer::train(&text, 320).unwrap().save(base.join("tokenizer.json")).unwrap();
    let data = root.join("text.txt");
    std::fs::write(&data, &text).unwrap();
    let run = root.join("run");
    let (b, d, r) = (base.to_str().unwrap(), data.to_str().unwrap(), run.to_str().unwrap());
    let flags = [
        "--steps",
        "3",
        "--batch",
        "2",
        "--seq",
        "32",
        "--sample-tokens",
        "0",
        "--lora",
        "4",
        "--lora-targets",
        "q,k,gate",
    ];
    let out = irontensor(&[&["train", "--init", b, "--data", d, "--out", r][..], &flags[..]].concat());
    assert!(out.contains("done: 3 steps"), "{out}");
    let ckpt = run.join("checkpoints/step_00000003");
    assert!(ckpt.join("adapter_config.json").exists() && !ckpt.join("model.safetensors").exists());
    let gen = ["--prompt", "ROMEO:", "--max-tokens", "8", "--temperature", "0"];
    let from_run = irontensor(&[&["generate", "--checkpoint", r][..], &gen[..]].concat());
    let c = ckpt.to_str().unwrap();
    let with_adapter = irontensor(&[&["generate", "--checkpoint", b, "--adapter", c][..], &gen[..]].concat());
    let text_of = |s: &str| s.lines().filter(|l| !l.starts_with("prompt: ")).collect::<Vec<_>>().join("\n");
    assert_eq!(text_of(&from_run), text_of(&with_adapter));
    // Exporting needs --merge; the merged folder loads as a plain model that computes the same.
    let merged = root.join("merged");
    let m = merged.to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_irontensor"))
        .args(["export", "--checkpoint", r, "--out", m])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--merge"));
    irontensor(&["export", "--checkpoint", r, "--out", m, "--merge"]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        assert!(merged.join(f).exists(), "{f} missing from the export");
    }
    let adapted = irontensor::train::load_model(&ckpt, Device::Cpu).unwrap().0;
    let plain = GPTModel::from_pretrained(&merged, Device::Cpu).unwrap();
    assert!(plain.lora.is_none());
    let ids: Vec<u32> = (0..23).map(|i| (i * 13 % 300) as u32).collect();
    common::assert_close(&logits(&plain, &ids), &common::f64s(&logits(&adapted, &ids)), 1e-5, 1e-4, "merged export");
    std::fs::remove_dir_all(&root).unwrap();
}

/// Activation checkpointing with adapters: the recomputed blocks give the adapters the same
/// gradients, so the same losses step after step.
#[test]
fn checkpointed_activations_train_adapters_alike() {
    let run = |checkpoint_activations: bool| -> Vec<f32> {
        let base = GPTModel::from_pretrained(fixtures().join("llama-tiny"), Device::Cpu).unwrap();
        let cfg = TrainingConfig { checkpoint_activations, ..lora_training(Device::Cpu, None, &tmp("unused")) };
        let mut t = Trainer::with_model(base, cfg).unwrap();
        let x: Vec<u32> = (0..2 * 16).map(|i| (i * 11 % 97) as u32).collect();
        let y: Vec<u32> = x.iter().map(|v| (v + 1) % 97).collect();
        (0..3).map(|_| t.train_step(&x, &y, 2, 16).unwrap().0).collect()
    };
    let (plain, checkpointed) = (run(false), run(true));
    common::assert_close(&checkpointed, &common::f64s(&plain), 1e-6, 1e-5, "losses with checkpointing");
}

/// On models with biases (Qwen2) and scaled RoPE, GQA and a BF16 base (Llama 3): adapters on
/// every projection train, and the merged model computes what the adapted one does.
#[test]
fn adapters_on_biased_and_llama3_models_merge_exactly() {
    for name in ["qwen2-tiny", "llama3-tiny"] {
        let base = GPTModel::from_pretrained(fixtures().join(name), Device::Cpu).unwrap();
        let vocab = base.config.vocab_size as u32;
        let targets = LoraConfig::parse_targets("q,k,v,o,gate,up,down").unwrap();
        let lora = Some(LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, targets });
        let cfg = TrainingConfig { learning_rate: 5e-2, warmup_steps: 0, lora, ..Default::default() };
        let mut t = Trainer::with_model(base, cfg).unwrap();
        let x: Vec<u32> = (0..2 * 12).map(|i| (i * 17 + 3) % vocab).collect();
        let y: Vec<u32> = x.iter().map(|v| (v * 5 + 1) % vocab).collect();
        for _ in 0..2 {
            t.train_step(&x, &y, 2, 12).unwrap();
        }
        let ids: Vec<u32> = x[..12].to_vec();
        let adapted = logits(&t.model, &ids);
        let merged = t.model.merged().unwrap();
        let base = GPTModel::from_pretrained(fixtures().join(name), Device::Cpu).unwrap();
        let moved = logits(&base, &ids).iter().zip(&adapted).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(moved > 1e-3, "{name}: the adapters did not change the model");
        // A BF16 base rounds the merged weight: compare at BF16's precision there.
        let tol = if merged.config.precision == irontensor::Precision::BF16 { 2e-2 } else { 1e-5 };
        common::assert_close(&logits(&merged, &ids), &common::f64s(&adapted), tol, tol, name);
    }
}
