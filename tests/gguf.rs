//! GGUF: the Q/K permutation against its definition, export → load round trips (f32 exact,
//! f16 and q8_0 within their precision), bad files, and llama.cpp itself via dev/gguf_llama_cpp.py.

use irontensor::data::Tokenizer;
use irontensor::gguf::format::Value;
use irontensor::gguf::{self, llama, quant, GgufType};
use irontensor::nn::{GPTModel, ModelConfig};
use irontensor::train::{Trainer, TrainingConfig};
use irontensor::{Device, Precision, RopeScaling, Tensor};
use std::path::{Path, PathBuf};

const TEXT: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n\
    First Citizen:\nYou are all resolved rather to die than to famish? 12345 wörld 日本 🦀\n";
/// Tokenized by us and by llama.cpp: words, digits, spaces, newlines and multi-byte UTF-8.
const PROBE: &str = "Speak, speak!  You are   all resolved 2026?\n\n\tthan to famish wörld 日本語 🦀";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irontensor_gguf_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A GQA model at awkward sizes (vocab 301 > the tokenizer's, so export pads), with weights
/// large enough that RoPE and attention patterns matter.
fn model(tie: bool) -> GPTModel {
    let config = ModelConfig {
        vocab_size: 301,
        hidden_dim: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 96,
        max_seq_len: 64,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: tie,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    };
    GPTModel::load(config, |name, shape| {
        let seed = name.bytes().fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let base = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        let t = Tensor::randn_on(shape, 0.2, seed, Device::Cpu).to_vec();
        Tensor::from_f32_on(&t.iter().map(|v| v + base).collect::<Vec<_>>(), shape, Device::Cpu)
    })
    .unwrap()
}

fn tokenizer() -> Tokenizer {
    Tokenizer::train(TEXT, 290).unwrap()
}

fn logits(m: &GPTModel, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::from_u32_on(ids, &[1, ids.len()], Device::Cpu).unwrap();
    m.forward(&t, 1, ids.len(), 0).unwrap().to_vec()
}

/// max |a - b| over max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    d / b.iter().fold(0f32, |m, y| m.max(y.abs()))
}

#[test]
fn permute_qk_matches_llama_cpp_definition() {
    // Two heads of dim 4, one column: HF rows per head are [x0, x1 | y0, y1] (rotate-half
    // halves); llama.cpp's reshape(H, 2, D/2).swapaxes(1, 2) gives pairs [x0, y0, x1, y1].
    let w: Vec<f32> = (0..8).map(|v| v as f32).collect();
    assert_eq!(llama::permute_qk(&w, 1, 2, true), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    // At an awkward size, against the reshape/swap written as index arithmetic, and inverted.
    let (heads, d, cols) = (3, 6, 5);
    let w: Vec<f32> = (0..heads * d * cols).map(|v| v as f32 * 0.5 - 3.0).collect();
    let p = llama::permute_qk(&w, cols, heads, true);
    for h in 0..heads {
        for i in 0..d / 2 {
            for s in 0..2 {
                for c in 0..cols {
                    // Element [h, s, i, c] of the reshaped input lands at [h, i, s, c].
                    assert_eq!(p[((h * d / 2 + i) * 2 + s) * cols + c], w[((h * 2 + s) * d / 2 + i) * cols + c]);
                }
            }
        }
    }
    assert_eq!(llama::permute_qk(&p, cols, heads, false), w);
}

#[test]
fn f32_round_trip_is_exact() {
    for tie in [false, true] {
        let (m, tok) = (model(tie), tokenizer());
        let path = tmp(&format!("f32_{tie}.gguf"));
        gguf::export(&m, &tok, &path, GgufType::F32).unwrap();
        let (back, tok2) = gguf::load(&path, Device::Cpu).unwrap();
        assert_eq!(back.config, m.config);
        let ids: Vec<u32> = (0..23).map(|i| (i * 37 + 5) % 301).collect();
        assert_eq!(logits(&back, &ids), logits(&m, &ids), "tie_weights {tie}");
        assert_eq!(tok2.encode(PROBE), tok.encode(PROBE));
        assert_eq!(tok2.encode(TEXT), tok.encode(TEXT));
        assert_eq!(tok2.eos_id(), tok.eos_id());
        assert_eq!(tok2.decode(&tok.encode(PROBE)), PROBE);
    }
}

#[test]
fn f16_and_q8_0_round_trips_within_precision() {
    let (m, tok) = (model(false), tokenizer());
    let ids: Vec<u32> = (0..19).map(|i| (i * 53 + 11) % 301).collect();
    let want = logits(&m, &ids);
    // Random weights of std 0.2 amplify an 8-bit weight error through two layers to several percent.
    for (ty, weight_tol, logit_tol) in [(GgufType::F16, 1e-3, 2e-3), (GgufType::Q8_0, 1.0 / 127.0, 0.1)] {
        let path = tmp(&format!("{ty:?}.gguf"));
        gguf::export(&m, &tok, &path, ty).unwrap();
        let (back, _) = gguf::load(&path, Device::Cpu).unwrap();
        for ((name, a), (_, b)) in back.parameters().iter().zip(m.parameters()) {
            let (a, b) = (a.to_vec(), b.to_vec());
            // Per element: f16 is within 2^-11 relative; a Q8_0 value within half a step of its block's max.
            for (blk_a, blk_b) in a.chunks(32).zip(b.chunks(32)) {
                let amax = blk_b.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in blk_a.iter().zip(blk_b) {
                    let tol = if ty == GgufType::F16 || name.contains("norm") {
                        y.abs() * weight_tol
                    } else {
                        amax * weight_tol
                    };
                    assert!((x - y).abs() <= tol + 1e-7, "{ty:?} {name}: {x} vs {y}");
                }
            }
        }
        let err = rel_err(&logits(&back, &ids), &want);
        assert!(err > 0.0 && err < logit_tol, "{ty:?}: logits relative error {err}");
    }
}

#[test]
fn q8_0_codec_matches_ggml_reference() {
    // One block as ggml's quantize_row_q8_0_ref makes it: d = amax/127, q = round(x/d).
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 12.3) * 0.71).collect();
    let bytes = quant::encode(&x, quant::Q8_0);
    assert_eq!(bytes.len(), 34);
    let d = half::f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_eq!(d, half::f16::from_f32(amax / 127.0).to_f32());
    for (i, v) in x.iter().enumerate() {
        assert_eq!(bytes[2 + i] as i8, (v * (127.0 / amax)).round() as i8);
    }
    let back = quant::decode(&bytes, quant::Q8_0);
    assert!(back.iter().zip(&x).all(|(a, b)| (a - b).abs() <= d * 0.51));
}

/// The error `load` gives for `bytes` written to a file.
fn load_err(name: &str, bytes: &[u8]) -> (String, PathBuf) {
    let path = tmp(name);
    std::fs::write(&path, bytes).unwrap();
    let e = gguf::load(&path, Device::Cpu).err().expect("a bad file must not load").to_string();
    assert!(e.contains(&path.display().to_string()), "error does not name the file: {e}");
    (e, path)
}

#[test]
fn bad_files_give_clear_errors() {
    let (m, tok) = (model(true), tokenizer());
    let path = tmp("good.gguf");
    gguf::export(&m, &tok, &path, GgufType::F32).unwrap();
    let good = std::fs::read(&path).unwrap();

    for cut in [3, 20, good.len() / 3, good.len() - 1] {
        let (e, _) = load_err("truncated.gguf", &good[..cut]);
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
    }
    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    assert!(load_err("magic.gguf", &bad).0.contains("magic"));

    let mut file = gguf::read(&path).unwrap();
    file.tensors[1].ty = 12; // Q4_K
    let (e, _) = load_err("q4k.gguf", &file.to_bytes());
    assert!(e.contains("Q4_K") && e.contains("not supported") && e.contains(&file.tensors[1].name), "{e}");

    let mut file = gguf::read(&path).unwrap();
    file.tensors[0].ty = 99;
    assert!(load_err("type99.gguf", &file.to_bytes()).0.contains("unknown type 99"));

    let mut file = gguf::read(&path).unwrap();
    file.metadata[0].1 = Value::Str("gemma".into());
    let (e, _) = load_err("gemma.gguf", &file.to_bytes());
    assert!(e.contains("\"gemma\"") && e.contains("not supported"), "{e}");

    // Llama 3.1's frequency factors and biases, as llama.cpp's converter writes them, are refused.
    for name in ["rope_freqs.weight", "blk.0.attn_q.bias"] {
        let mut file = gguf::read(&path).unwrap();
        let mut t = file.tensors[0].clone();
        t.name = name.into();
        file.tensors.push(t);
        let (e, _) = load_err("extra.gguf", &file.to_bytes());
        assert!(e.contains(name) && e.contains("not supported"), "{e}");
    }

    let mut file = gguf::read(&path).unwrap();
    let pre = file.metadata.iter_mut().find(|(k, _)| k == "tokenizer.ggml.pre").unwrap();
    pre.1 = Value::Str("llama-bpe".into());
    let (e, _) = load_err("pre.gguf", &file.to_bytes());
    assert!(e.contains("llama-bpe") && e.contains("pre-tokenizer"), "{e}");
}

/// A Hugging Face checkpoint under tests/fixtures (config.json + model.safetensors) made by
/// transformers, exported and loaded back: identical logits.
#[test]
fn transformers_fixture_round_trip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.join("config.json").exists() && d.join("model.safetensors").exists())
        .collect();
    if dirs.is_empty() {
        println!("skipped: no transformers fixture (config.json + model.safetensors) under tests/fixtures");
        return;
    }
    for dir in dirs {
        let m = GPTModel::from_pretrained(&dir, Device::Cpu).unwrap();
        // transformers' own logits for its fixed tokens (dev/make_fixtures.py): ours match them.
        if let Ok(text) = std::fs::read_to_string(dir.join("expected.json")) {
            let want: serde_json::Value = serde_json::from_str(&text).unwrap();
            let ids: Vec<u32> = want["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            // The logits are those of the first tokens (all but the last where a loss was taken too).
            let ids = &ids[..want["logits"].as_array().unwrap().len()];
            let rows = want["logits"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap().clone());
            let want: Vec<f32> = rows.map(|v| v.as_f64().unwrap() as f32).collect();
            let err = rel_err(&logits(&m, ids), &want);
            assert!(err < 1e-5, "{}: our logits differ from transformers' by {err} (relative)", dir.display());
        }
        let tok = Tokenizer::load(dir.join("tokenizer.json")).unwrap_or_else(|_| tokenizer());
        if tok.vocab_size() > m.config.vocab_size {
            println!("skipped {}: its vocabulary is smaller than the test tokenizer's", dir.display());
            continue;
        }
        let path = tmp("fixture.gguf");
        let c = &m.config;
        if c.qkv_bias() || c.mlp_bias || c.rope_scaling != RopeScaling::None {
            // What llama.cpp's llama architecture would misread is refused, naming it.
            let e = gguf::export(&m, &tok, &path, GgufType::F32).unwrap_err().to_string();
            let named = ["Qwen2", "biases", "RoPE scaling"].iter().any(|w| e.contains(w));
            assert!(e.contains("cannot be written as a llama GGUF") && named, "{}: {e}", dir.display());
            continue;
        }
        gguf::export(&m, &tok, &path, GgufType::F32).unwrap();
        let (back, _) = gguf::load(&path, Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..17).map(|i| (i * 29 + 3) % m.config.vocab_size as u32).collect();
        assert_eq!(logits(&back, &ids), logits(&m, &ids), "{}", dir.display());
    }
}

/// Our greedy continuation of `prompt`, `steps` tokens.
fn greedy(m: &GPTModel, prompt: &[u32], steps: usize) -> Vec<u32> {
    let mut ids = prompt.to_vec();
    let v = m.config.vocab_size;
    for _ in 0..steps {
        let l = logits(m, &ids);
        let last = &l[(ids.len() - 1) * v..];
        let best = (0..v).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        ids.push(best as u32);
    }
    ids[prompt.len()..].to_vec()
}

/// llama.cpp itself (dev/gguf_llama_cpp.py through llama-cpp-python) on our f32 and q8_0 exports:
/// the same tokenization, f32 logits within 1e-3 relative, q8_0 greedy tokens equal for 32 steps.
#[test]
fn llama_cpp_agrees() {
    if !llama_cpp_installed() {
        println!("skipped: llama-cpp-python not installed (pip install llama-cpp-python gguf)");
        return;
    }
    let tok = tokenizer();
    // Trained on TEXT until it recites it: its greedy choices then have margins that q8_0's
    // rounding (llama.cpp also rounds the activations to 8 bits) does not flip, as a random
    // model's near-ties are flipped.
    let config = TrainingConfig { learning_rate: 3e-3, warmup_steps: 0, total_steps: 400, ..Default::default() };
    let mut trainer = Trainer::with_model(model(false), config).unwrap();
    let ids = tok.encode(&TEXT.repeat(4));
    for step in 0..400 {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for b in 0..4 {
            let at = (step * 4 + b) * 13 % (ids.len() - 33);
            x.extend_from_slice(&ids[at..at + 32]);
            y.extend_from_slice(&ids[at + 1..at + 33]);
        }
        trainer.train_step(&x, &y, 4, 32).unwrap();
    }
    let m = trainer.model;
    for (ty, name) in [(GgufType::F32, "f32"), (GgufType::Q8_0, "q8_0")] {
        llama_cpp_check(&m, &tok, ty, name, 32);
    }
}

fn llama_cpp_installed() -> bool {
    let ok = std::process::Command::new("python3").args(["-c", "import llama_cpp, gguf"]).output();
    ok.is_ok_and(|o| o.status.success())
}

/// Exports `m` as `ty` and runs dev/gguf_llama_cpp.py on it: tokenization, logits (f32) and
/// `steps` greedy tokens against ours.
fn llama_cpp_check(m: &GPTModel, tok: &Tokenizer, ty: GgufType, name: &str, steps: usize) {
    let prompt = tok.encode("First Citizen:\nBefore we proceed");
    let path = tmp(&format!("llama_cpp_{name}.gguf"));
    gguf::export(m, tok, &path, ty).unwrap();
    // Ours from the file as we load it (for q8_0: the dequantized weights llama.cpp also has).
    let (ours, _) = gguf::load(&path, Device::Cpu).unwrap();
    assert_eq!(ours.config, m.config, "{name}: the config read back");
    let want = serde_json::json!({
        "type": if name.starts_with("f32") { "f32" } else { name },
        "n_ctx": m.config.max_seq_len,
        "probe_text": PROBE,
        "probe_ids": tok.encode(PROBE),
        "prompt_ids": prompt,
        "logits": logits(&ours, &prompt).chunks(m.config.vocab_size).collect::<Vec<_>>(),
        "greedy": greedy(&ours, &prompt, steps),
    });
    let json = path.with_extension("json");
    std::fs::write(&json, want.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("dev/gguf_llama_cpp.py");
    let out = std::process::Command::new("python3").arg(&script).arg(&path).arg(&json).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    println!("{name}:\n{text}");
    assert!(out.status.success(), "llama.cpp disagrees on {name}:\n{text}");
}

/// A head width other than hidden / heads (q_proj [heads·head_dim, hidden]) is written as
/// llama.attention.key_length / value_length, which llama.cpp reads: same logits.
#[test]
fn llama_cpp_reads_an_explicit_head_dim() {
    if !llama_cpp_installed() {
        println!("skipped: llama-cpp-python not installed (pip install llama-cpp-python gguf)");
        return;
    }
    let base = model(false);
    let config = ModelConfig { explicit_head_dim: Some(24), ..base.config.clone() };
    let m = GPTModel::load(config, |name, shape| {
        let seed = name.bytes().fold(23u64, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
        let t = Tensor::randn_on(shape, 0.3, seed, Device::Cpu).to_vec();
        let base = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        Tensor::from_f32_on(&t.iter().map(|v| v + base).collect::<Vec<_>>(), shape, Device::Cpu)
    })
    .unwrap();
    assert_eq!(m.parameter("model.layers.0.self_attn.q_proj.weight").unwrap().shape(), &[96, 64]);
    llama_cpp_check(&m, &tokenizer(), GgufType::F32, "f32_head_dim", 8);
}
