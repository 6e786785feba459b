//! Training stack: the model learns, devices agree, checkpoints resume exactly, HF round trip,
//! schedulers, accumulation, NaN protection, and the errors of bad configs and checkpoints.

mod common;
use common::{assert_close, f64s};
use irontensor::nn::{GPTModel, ModelConfig};
use irontensor::train::{Decay, LrScheduler, OptimizerKind, Trainer, TrainingConfig};
use irontensor::{CosineAnnealingLR, Device, Precision, Tensor};

fn tiny() -> ModelConfig {
    ModelConfig {
        vocab_size: 64,
        hidden_dim: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 64,
        max_seq_len: 32,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    }
}

fn train_config(optimizer: OptimizerKind, lr: f32, steps: usize) -> TrainingConfig {
    TrainingConfig {
        learning_rate: lr,
        optimizer,
        warmup_steps: 5,
        total_steps: steps,
        weight_decay: 0.0,
        ..Default::default()
    }
}

/// (inputs, targets) of `batch` windows of `seq` bytes of TinyShakespeare, tokens = bytes % vocab.
fn text_batch(offset: usize, batch: usize, seq: usize, vocab: u32) -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read(common::SHAKESPEARE).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for b in 0..batch {
        let start = offset + b * 997;
        x.extend(text[start..start + seq].iter().map(|&c| c as u32 % vocab));
        y.extend(text[start + 1..start + seq + 1].iter().map(|&c| c as u32 % vocab));
    }
    (x, y)
}

#[test]
fn memorises_one_batch() {
    let mut t = Trainer::new_on(tiny(), train_config(OptimizerKind::AdamW, 1e-2, 150), Device::Cpu).unwrap();
    let (x, y) = text_batch(0, 4, 16, 64);
    let mut last = f32::MAX;
    for _ in 0..150 {
        last = t.train_step(&x, &y, 4, 16).unwrap().0;
    }
    assert!(last < 0.1, "loss on one fixed batch should fall below 0.1, got {last}");
}

#[test]
fn loss_falls_on_real_text() {
    let mut cfg = tiny();
    cfg.vocab_size = 128;
    let mut t = Trainer::new_on(cfg, train_config(OptimizerKind::Lion, 2e-3, 60), Device::Cpu).unwrap();
    let eval: Vec<_> = (0..2).map(|i| text_batch(900_000 + i * 20_000, 8, 32, 128)).collect();
    let before = t.evaluate(&eval, 8, 32).unwrap();
    for step in 0..60 {
        let (x, y) = text_batch(step * 8 * 997, 8, 32, 128);
        t.train_step(&x, &y, 8, 32).unwrap();
    }
    let after = t.evaluate(&eval, 8, 32).unwrap();
    assert!(before > 4.5 && after < before - 1.5, "validation loss {before} -> {after}");
}

/// 60 steps of Sophia (Hessian estimates every 10) and of AdamW from the same weights on the
/// same TinyShakespeare batches: Sophia's validation loss must fall as far, within 0.1 nats.
#[test]
fn sophia_trains_like_adamw() {
    let mut cfg = tiny();
    cfg.vocab_size = 128;
    let eval: Vec<_> = (0..2).map(|i| text_batch(900_000 + i * 20_000, 8, 32, 128)).collect();
    let run = |kind: OptimizerKind, lr: f32| {
        let mut t = Trainer::new_on(cfg.clone(), train_config(kind, lr, 60), Device::Cpu).unwrap();
        let mut curve = vec![(0, t.evaluate(&eval, 8, 32).unwrap())];
        for step in 0..60 {
            let (x, y) = text_batch(step * 8 * 997, 8, 32, 128);
            t.train_step(&x, &y, 8, 32).unwrap();
            if (step + 1) % 10 == 0 {
                curve.push((step + 1, t.evaluate(&eval, 8, 32).unwrap()));
            }
        }
        curve
    };
    let adamw = run(OptimizerKind::AdamW, 3e-3);
    let sophia = run(OptimizerKind::Sophia, 3e-3);
    eprintln!("validation loss by step: (step, adamw, sophia)");
    for ((s, a), (_, b)) in adamw.iter().zip(&sophia) {
        eprintln!("{s:3} {a:.4} {b:.4}");
    }
    let (a, b) = (adamw.last().unwrap().1, sophia.last().unwrap().1);
    assert!(adamw[0].1 > 4.5 && a < adamw[0].1 - 1.5, "adamw: validation loss {} -> {a}", adamw[0].1);
    assert!(b < a + 0.1, "sophia's validation loss {b} should be within 0.1 of adamw's {a}");
}

/// The GPU's Sophia (its kernels, and labels sampled from logits read back) follows the CPU's.
#[test]
fn sophia_cpu_and_gpu_agree() {
    let Some(gpu) = common::gpu() else { return };
    let mut cfg = train_config(OptimizerKind::Sophia, 3e-3, 12);
    cfg.sophia_k = 4;
    let mut cpu = Trainer::new_on(tiny(), cfg.clone(), Device::Cpu).unwrap();
    let mut dev = Trainer::new_on(tiny(), cfg, gpu).unwrap();
    for step in 0..12 {
        let (x, y) = text_batch(step * 5000, 2, 16, 64);
        let (lc, _) = cpu.train_step(&x, &y, 2, 16).unwrap();
        let (lg, _) = dev.train_step(&x, &y, 2, 16).unwrap();
        assert!((lc - lg).abs() < 3e-3 * lc.abs().max(1.0), "step {step}: cpu loss {lc}, gpu loss {lg}");
    }
}

#[test]
fn cpu_and_gpu_agree_for_20_steps() {
    let Some(gpu) = common::gpu() else { return };
    let cfg = train_config(OptimizerKind::AdamW, 3e-3, 20);
    let mut cpu = Trainer::new_on(tiny(), cfg.clone(), Device::Cpu).unwrap();
    let mut dev = Trainer::new_on(tiny(), cfg, gpu).unwrap();
    for step in 0..20 {
        let (x, y) = text_batch(step * 5000, 2, 16, 64);
        let (lc, nc) = cpu.train_step(&x, &y, 2, 16).unwrap();
        let (lg, ng) = dev.train_step(&x, &y, 2, 16).unwrap();
        assert!((lc - lg).abs() < 2e-3 * lc.abs().max(1.0), "step {step}: cpu loss {lc}, gpu loss {lg}");
        assert!((nc - ng).abs() < 1e-2 * nc.max(1.0), "step {step}: cpu grad norm {nc}, gpu {ng}");
    }
}

/// On the CPU, and on the GPU (parameters, gradients and optimizer state in flat buffers there).
#[test]
fn resume_is_bit_exact() {
    resume_is_bit_exact_on(Device::Cpu, OptimizerKind::Lion);
    if let Some(gpu) = common::gpu() {
        resume_is_bit_exact_on(gpu, OptimizerKind::Lion);
    }
}

/// Sophia with a Hessian estimate every 3 steps: at steps 0 and 3 before the checkpoint (at 4),
/// at 6 after it, from the restored (m, h), step count and label-sampling stream.
#[test]
fn sophia_resume_is_bit_exact() {
    resume_is_bit_exact_on(Device::Cpu, OptimizerKind::Sophia);
    if let Some(gpu) = common::gpu() {
        resume_is_bit_exact_on(gpu, OptimizerKind::Sophia);
    }
}

fn resume_is_bit_exact_on(device: Device, optimizer: OptimizerKind) {
    let name = format!("{}-{optimizer:?}", device.name());
    let dir = std::env::temp_dir().join(format!("irontensor-resume-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = train_config(optimizer, 1e-3, 8);
    cfg.sophia_k = 3;
    cfg.checkpoint_dir = dir.to_string_lossy().into_owned();
    let mut model = tiny();
    model.dropout = 0.1; // the dropout masks must resume too
    let batches: Vec<_> = (0..8).map(|i| text_batch(i * 3000, 2, 16, 64)).collect();
    let mut full = Trainer::new_on(model.clone(), cfg.clone(), device).unwrap();
    let want: Vec<f32> = batches.iter().map(|(x, y)| full.train_step(x, y, 2, 16).unwrap().0).collect();

    let mut first = Trainer::new_on(model, cfg, device).unwrap();
    for (x, y) in &batches[..4] {
        first.train_step(x, y, 2, 16).unwrap();
    }
    first.data_position = 4;
    let saved = first.save_numbered().unwrap();
    drop(first); // "killed"
    let latest = Trainer::latest_checkpoint(&dir).unwrap().unwrap();
    assert_eq!(latest, saved);
    let mut resumed = Trainer::load_checkpoint(&latest, device).unwrap();
    assert_eq!((resumed.step, resumed.data_position), (4, 4));
    assert_eq!(resumed.optimizer_name(), format!("{optimizer:?}").to_lowercase());
    let got: Vec<f32> = batches[4..].iter().map(|(x, y)| resumed.train_step(x, y, 2, 16).unwrap().0).collect();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want[4..].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    let w = |t: &Trainer| t.model.parameters().iter().flat_map(|(_, p)| p.to_vec()).collect::<Vec<_>>();
    assert_eq!(w(&resumed), w(&full), "weights after resuming differ");
    // Only the newest `keep_checkpoints` survive.
    for _ in 0..4 {
        resumed.save_numbered().unwrap();
        resumed.step += 1;
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hf_layout_round_trip() {
    for device in [Device::Cpu].into_iter().chain(common::gpu()) {
        let dir = std::env::temp_dir().join(format!("irontensor-hf-{}-{}", std::process::id(), device.name()));
        let mut cfg = tiny();
        cfg.tie_weights = true;
        let model = GPTModel::new_on(cfg.clone(), device, 7).unwrap();
        model.save_pretrained(&dir).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(json["architectures"][0], "LlamaForCausalLM");
        assert_eq!(json["num_key_value_heads"], 2);
        let loaded = GPTModel::from_pretrained(&dir, device).unwrap();
        assert_eq!(loaded.config, cfg);
        let names: Vec<&str> = loaded.parameters().iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"model.layers.1.self_attn.k_proj.weight") && names.contains(&"model.norm.weight"));
        assert!(!names.contains(&"lm_head.weight"), "tied weights are saved once");
        let tokens = Tensor::from_u32_on(&[1, 5, 9, 63, 0, 2, 2, 7], &[2, 4], device).unwrap();
        let a = model.forward(&tokens, 2, 4, 0).unwrap();
        assert_eq!(a.shape(), &[2, 4, 64]);
        assert_eq!(a.to_vec(), loaded.forward(&tokens, 2, 4, 0).unwrap().to_vec());
        // rope_parameters.rope_theta, the newer spelling, is read too.
        let mut j = json.clone();
        j.as_object_mut().unwrap().remove("rope_theta");
        j["rope_parameters"] = serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"});
        assert_eq!(ModelConfig::from_hf_json(&j).unwrap().rope_base, 500000.0);
        // What the model cannot reproduce is refused, naming the field.
        let scaling = |t: &str| serde_json::json!({"rope_type": t, "factor": 32.0, "rope_theta": 10000.0});
        let refused = [
            ("model_type", serde_json::json!("mistral")),
            ("rope_scaling", scaling("yarn")),
            ("rope_scaling", serde_json::json!({"type": "dynamic", "factor": 2.0})),
            ("rope_parameters", scaling("longrope")),
            ("rope_parameters", serde_json::json!({"rope_type": "default", "partial_rotary_factor": 0.5})),
            ("sliding_window", serde_json::json!(4096)),
            ("num_local_experts", serde_json::json!(8)),
            ("hidden_act", serde_json::json!("gelu")),
            ("head_dim", serde_json::json!("16")),
        ];
        for (field, value) in refused {
            let mut j = json.clone();
            j[field] = value;
            let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
            assert!(e.contains(&format!("config.json: {field}")) && e.contains(" = "), "{field}: {e}");
        }
        // A llama3 scaling without its fields names the missing one; Qwen2 with its sliding
        // window in use is refused, without it (the window size set, unused) loads.
        let mut j = json.clone();
        j["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0});
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.low_freq_factor is missing"), "{e}");
        let mut j = json.clone();
        (j["model_type"], j["sliding_window"], j["max_window_layers"]) = ("qwen2".into(), 4096.into(), 2.into());
        assert_eq!(ModelConfig::from_hf_json(&j).unwrap().architecture, irontensor::nn::Architecture::Qwen2);
        j["use_sliding_window"] = true.into();
        let e = ModelConfig::from_hf_json(&j).unwrap_err().to_string();
        assert!(e.contains("config.json: sliding_window = 4096"), "{e}");
        let mut j = json.clone();
        (j["rope_scaling"], j["attention_bias"], j["sliding_window"]) =
            (serde_json::Value::Null, false.into(), serde_json::Value::Null);
        assert!(ModelConfig::from_hf_json(&j).is_ok(), "null and false mean unused");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_configs_and_checkpoints_are_clear_errors() {
    let bad = |f: fn(&mut ModelConfig), want: &str| {
        let mut c = tiny();
        f(&mut c);
        let msg = GPTModel::new_on(c, Device::Cpu, 0).err().expect("invalid config").to_string();
        assert!(msg.contains(want), "{msg}");
    };
    bad(|c| c.num_heads = 5, "num_heads (5) must divide hidden_dim (32)");
    bad(|c| c.num_kv_heads = 3, "num_kv_heads (3) must divide num_heads (4)");
    bad(|c| (c.hidden_dim, c.num_heads, c.num_kv_heads) = (36, 12, 12), "must be even for RoPE");
    bad(|c| c.explicit_head_dim = Some(7), "head dim = 7 must be even");
    bad(|c| (c.architecture, c.mlp_bias) = (irontensor::nn::Architecture::Qwen2, true), "q, k and v only");
    bad(
        |c| c.rope_scaling = irontensor::RopeScaling::Linear { factor: 0.0 },
        "linear scaling factor must be finite and > 0",
    );
    let dir = std::env::temp_dir().join(format!("irontensor-bad-{}", std::process::id()));
    let t = Trainer::new_on(tiny(), TrainingConfig::default(), Device::Cpu).unwrap();
    t.save_checkpoint(&dir).unwrap();
    assert!(Trainer::load_checkpoint(&dir, Device::Cpu).is_ok());
    // Truncated weights.
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let msg = Trainer::load_checkpoint(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("truncated or corrupt"), "{msg}");
    std::fs::write(&w, &bytes).unwrap();
    // A config that does not match the weights.
    let meta = dir.join("trainer.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("\"num_layers\": 2", "\"num_layers\": 3")).unwrap();
    let msg = Trainer::load_checkpoint(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("model.layers.2") && msg.contains("does not match"), "{msg}");
    std::fs::write(&meta, "{ not json").unwrap();
    let msg = Trainer::load_checkpoint(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("corrupt trainer.json"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
    let msg = Trainer::load_checkpoint(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(msg.contains("is not a checkpoint"), "{msg}");
}

#[test]
fn accumulation_matches_one_big_batch() {
    let (x, y) = text_batch(100, 4, 16, 64);
    let mut losses = Vec::new();
    for accum in [1, 2, 4] {
        let mut cfg = train_config(OptimizerKind::AdamW, 1e-3, 10);
        cfg.grad_accum_steps = accum;
        let mut t = Trainer::new_on(tiny(), cfg, Device::Cpu).unwrap();
        let (l1, n1) = t.train_step(&x, &y, 4, 16).unwrap();
        let (l2, _) = t.train_step(&x, &y, 4, 16).unwrap();
        losses.push((l1, n1, l2));
    }
    for &(l1, n1, l2) in &losses[1..] {
        assert_close(
            &[l1, n1, l2],
            &f64s(&[losses[0].0, losses[0].1, losses[0].2]),
            1e-5,
            1e-4,
            "accumulated vs big batch",
        );
    }
}

#[test]
fn nan_loss_skips_the_update() {
    let mut t = Trainer::new_on(tiny(), TrainingConfig::default(), Device::Cpu).unwrap();
    // Poison one embedding row: its tokens give a NaN loss.
    let emb = &t.model.parameters()[0].1;
    let mut v = emb.to_vec();
    v[..32].fill(f32::NAN);
    let poisoned = Tensor::from_f32_on(&v, emb.shape(), Device::Cpu).unwrap();
    let mut tensors: std::collections::HashMap<String, Tensor> = t.model.parameters().iter().cloned().collect();
    tensors.insert("model.embed_tokens.weight".into(), poisoned);
    let model = GPTModel::from_tensors(tiny(), tensors).unwrap();
    let mut t2 = Trainer::with_model(model, TrainingConfig::default()).unwrap();
    let before: Vec<f32> = t2.model.parameters()[1].1.to_vec();
    let x = vec![0u32; 16];
    let (loss, _) = t2.train_step(&x, &x, 1, 16).unwrap();
    assert!(!loss.is_finite());
    assert_eq!(t2.skipped_steps, 1);
    assert_eq!(t2.model.parameters()[1].1.to_vec(), before, "a NaN step must not touch the weights");
    t.train_step(&[1; 16], &[2; 16], 1, 16).unwrap();
    assert_eq!(t.skipped_steps, 0);
}

/// A NaN step on either device: no weight, optimizer state or step count moves, so the next
/// good step gives what it gives in a trainer that never saw the NaN batch.
fn nan_step_is_skipped_on_the_device(device: Device) {
    let mut cfg = train_config(OptimizerKind::AdamW, 1e-2, 10);
    cfg.schedule = Decay::Constant;
    cfg.warmup_steps = 0; // the same learning rate at trainer steps 0 and 1
    let model = GPTModel::new_on(tiny(), Device::Cpu, 5).unwrap();
    let mut tensors: std::collections::HashMap<String, Tensor> = model.parameters().iter().cloned().collect();
    let emb = &tensors["model.embed_tokens.weight"];
    let mut v = emb.to_vec();
    v[..32].fill(f32::NAN); // token 0's row: batches of token 0 give a NaN loss
    tensors.insert("model.embed_tokens.weight".into(), Tensor::from_f32_on(&v, emb.shape(), Device::Cpu).unwrap());
    let make = || {
        // Fresh copies: the two trainers must not share weights.
        let copy = |t: &Tensor| Tensor::from_f32_on(&t.to_vec(), t.shape(), device).unwrap();
        let t = tensors.iter().map(|(k, t)| (k.clone(), copy(t))).collect();
        Trainer::with_model(GPTModel::from_tensors(tiny(), t).unwrap(), cfg.clone()).unwrap()
    };
    let (mut a, mut b) = (make(), make());
    let (x, y) = text_batch(300, 2, 16, 64);
    let x: Vec<u32> = x.iter().map(|&t| t.max(1)).collect();
    let (loss, _) = a.train_step(&[0; 32], &y, 2, 16).unwrap();
    assert!(!loss.is_finite());
    assert_eq!((a.skipped_steps, a.step), (1, 1));
    let la = a.train_step(&x, &y, 2, 16).unwrap();
    let lb = b.train_step(&x, &y, 2, 16).unwrap();
    assert_eq!(la, lb, "the step after a skipped one");
    let bits =
        |t: &Trainer| t.model.parameters().iter().flat_map(|(_, p)| p.to_vec()).map(f32::to_bits).collect::<Vec<_>>();
    assert!(bits(&a) == bits(&b), "weights after a skipped step and a good one");
}

#[test]
fn nan_step_is_skipped_on_cpu() {
    nan_step_is_skipped_on_the_device(Device::Cpu);
}

#[test]
fn nan_step_is_skipped_on_gpu() {
    if let Some(gpu) = common::gpu() {
        nan_step_is_skipped_on_the_device(gpu);
    }
}

/// A GPU training step reads the GPU from the host once (the loss and norm at its end): token
/// ids are checked on their host copy, and clipping and the NaN skip are decided on the GPU.
#[test]
fn a_gpu_step_reads_the_host_once() {
    let Some(gpu) = common::gpu() else { return };
    for accum in [1, 2] {
        let mut cfg = train_config(OptimizerKind::Lion, 1e-3, 10);
        cfg.grad_accum_steps = accum;
        let mut t = Trainer::new_on(tiny(), cfg, gpu).unwrap();
        let (x, y) = text_batch(0, 2, 16, 64);
        t.train_step(&x, &y, 2, 16).unwrap();
        let before = irontensor::device::gpu::counters();
        t.train_step(&x, &y, 2, 16).unwrap();
        let c = irontensor::device::gpu::counters() - before;
        assert_eq!(c.reads, 1, "host reads in one step with {accum} micro-batches: {c:?}");
    }
}

/// On the GPU the parameters are views of one buffer (fresh and loaded models alike) and the
/// trainer gathers the gradients into one: clipping and the update then add three dispatches
/// to the forward and backward, whatever the number of parameters.
#[test]
fn a_gpu_optimizer_step_is_three_dispatches() {
    let Some(gpu) = common::gpu() else { return };
    let dir = std::env::temp_dir().join(format!("irontensor-flat-{}", std::process::id()));
    let mut t = Trainer::new_on(tiny(), train_config(OptimizerKind::AdamW, 1e-3, 10), gpu).unwrap();
    let (x, y) = text_batch(0, 2, 16, 64);
    t.train_step(&x, &y, 2, 16).unwrap();
    t.save_checkpoint(&dir).unwrap();
    let loaded = Trainer::load_checkpoint(&dir, gpu).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    for model in [&t.model, &loaded.model] {
        let params = model.parameters();
        assert!(params.len() > 10 && params.iter().all(|(_, p)| p.shares_storage(&params[0].1)));
    }
    let (xt, yt) = (Tensor::from_u32_on(&x, &[2, 16], gpu).unwrap(), Tensor::from_u32_on(&y, &[2, 16], gpu).unwrap());
    let before = irontensor::device::gpu::counters();
    t.model.loss(&xt, &yt, 2, 16, None).unwrap().backward().unwrap();
    let forward_backward = (irontensor::device::gpu::counters() - before).dispatches;
    let before = irontensor::device::gpu::counters();
    t.train_step(&x, &y, 2, 16).unwrap();
    let step = (irontensor::device::gpu::counters() - before).dispatches;
    assert_eq!(step, forward_backward + 3, "a step's dispatches beyond forward and backward");
}

#[test]
fn bf16_tracks_fp32() {
    bf16_tracks_fp32_on(Device::Cpu);
    if let Some(gpu) = common::gpu() {
        bf16_tracks_fp32_on(gpu);
    }
}

fn bf16_tracks_fp32_on(device: Device) {
    let mut curves = Vec::new();
    for bf16 in [false, true] {
        let mut cfg = train_config(OptimizerKind::AdamW, 3e-3, 30);
        cfg.use_bf16 = bf16;
        let mut t = Trainer::new_on(tiny(), cfg, device).unwrap();
        assert_eq!(t.model.parameters()[0].1.dtype(), if bf16 { Precision::BF16 } else { Precision::FP32 });
        let curve: Vec<f32> = (0..30)
            .map(|s| {
                t.train_step(&text_batch(s * 1000, 4, 16, 64).0, &text_batch(s * 1000, 4, 16, 64).1, 4, 16).unwrap().0
            })
            .collect();
        curves.push(curve);
    }
    let (f, b) = (&curves[0], &curves[1]);
    assert!(f[29] < f[0] - 0.5, "fp32 should learn: {} -> {}", f[0], f[29]);
    for s in 0..30 {
        assert!((f[s] - b[s]).abs() < 0.1 * f[s], "{device:?} step {s}: fp32 {} vs bf16 {}", f[s], b[s]);
    }
}

#[test]
fn schedulers() {
    let s = CosineAnnealingLR::with_warmup(1.0, 10, 110);
    assert_close(
        &[s.get_lr(0), s.get_lr(9), s.get_lr(10), s.get_lr(60), s.get_lr(110), s.get_lr(500)],
        &[0.1, 1.0, 1.0, 0.5, 0.0, 0.0],
        1e-6,
        0.0,
        "cosine",
    );
    let l = LrScheduler::new(Decay::Linear, 2.0, 0, 100);
    assert_close(&[l.get_lr(0), l.get_lr(25), l.get_lr(100)], &[2.0, 1.5, 0.0], 1e-6, 0.0, "linear");
    let i = LrScheduler::new(Decay::InverseSqrt, 1.0, 4, 0);
    assert_close(&[i.get_lr(1), i.get_lr(3), i.get_lr(15)], &[0.5, 1.0, 0.5], 1e-6, 0.0, "inverse sqrt");
    let c = LrScheduler::new(Decay::Constant, 3.0, 2, 0);
    assert_close(&[c.get_lr(0), c.get_lr(1), c.get_lr(1000)], &[1.5, 3.0, 3.0], 1e-6, 0.0, "constant");
}

#[test]
fn presets_have_their_sizes() {
    let m = |c: ModelConfig| c.num_params() as f64 / 1e6;
    assert!((4.0..6.0).contains(&m(ModelConfig::tiny())), "tiny {}", m(ModelConfig::tiny()));
    assert!((28.0..34.0).contains(&m(ModelConfig::small())), "small {}", m(ModelConfig::small()));
    assert!((115.0..135.0).contains(&m(ModelConfig::medium())), "medium {}", m(ModelConfig::medium()));
    let model = GPTModel::new_on(ModelConfig::shakespeare(), Device::Cpu, 0).unwrap();
    let counted: usize = model.parameters().iter().map(|(_, t)| t.numel()).sum();
    assert_eq!(counted, ModelConfig::shakespeare().num_params());
}

/// Resuming past damaged checkpoints: `load_latest` takes the newest that loads and lists the
/// newer ones as damaged; retention then never deletes those, nor the one resumed from before
/// `keep_checkpoints` newer good ones exist; a damaged one in the way is moved aside, intact.
#[test]
fn damaged_checkpoints_are_skipped_kept_and_never_overwritten() {
    let dir = std::env::temp_dir().join(format!("irontensor-damaged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = train_config(OptimizerKind::AdamW, 1e-3, 10);
    cfg.checkpoint_dir = dir.to_string_lossy().into_owned();
    cfg.keep_checkpoints = 5;
    let mut t = Trainer::new_on(tiny(), cfg, Device::Cpu).unwrap();
    let (x, y) = text_batch(0, 2, 8, tiny().vocab_size as u32);
    for _ in 0..4 {
        t.train_step(&x, &y, 2, 8).unwrap();
        t.save_numbered().unwrap();
    }
    let step = |n: usize| dir.join(format!("step_{n:08}"));
    // Damage steps 3 and 4 in two ways: cut optimizer state, unreadable trainer.json.
    let opt = step(3).join("optimizer.safetensors");
    let cut = std::fs::read(&opt).unwrap()[..100].to_vec();
    std::fs::write(&opt, &cut).unwrap();
    std::fs::write(step(4).join("trainer.json"), "{").unwrap();
    let (from, mut r) = Trainer::load_latest(&dir, Device::Cpu).unwrap().unwrap();
    assert_eq!((from, r.step), (step(2), 2));
    assert_eq!(r.damaged, vec![step(4), step(3)]);
    r.config.keep_checkpoints = 2;
    r.train_step(&x, &y, 2, 8).unwrap();
    r.save_numbered().unwrap(); // step 3: the damaged one moves aside
    assert_eq!(std::fs::read(step(3).with_extension("damaged").join("optimizer.safetensors")).unwrap(), cut);
    assert!(Trainer::load_checkpoint(step(3), Device::Cpu).is_ok());
    assert!(step(2).exists() && step(4).exists(), "the resumed-from or a damaged checkpoint was deleted");
    assert!(!step(1).exists(), "retention keeps the newest 2 good ones: 2 and 3");
    r.train_step(&x, &y, 2, 8).unwrap();
    r.save_numbered().unwrap(); // step 4: moved aside too
    assert!(!step(2).exists() && step(3).exists() && step(4).with_extension("damaged").exists());
    assert!(Trainer::load_checkpoint(step(4), Device::Cpu).is_ok());
    // With no checkpoint that loads, the error names every damaged one.
    for n in [3, 4] {
        std::fs::write(step(n).join("model.safetensors"), b"x").unwrap();
    }
    let e = Trainer::load_latest(&dir, Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("step_00000003") && e.contains("step_00000004") && e.contains("no checkpoint"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
