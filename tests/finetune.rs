//! Fine-tuning data: JSONL records, chat templates against transformers' rendering, loss masks,
//! packing, the masked loss in the trainer, and `train` / `eval` / `generate --chat` on JSONL.

mod common;
use irontensor::data::{
    pack, parse_record, read_jsonl, ChatTemplate, Encoded, Encoder, MaskedDataset, Message, Record, Tokenizer,
};
use irontensor::nn::{ModelConfig, IGNORE_INDEX};
use irontensor::rng::Rng;
use irontensor::train::{Trainer, TrainingConfig};
use irontensor::{no_grad, Device, Precision, Tensor};
use std::path::{Path, PathBuf};

const CHAT: &str = "tests/fixtures/chat";

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("irontensor-finetune-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tokenizer() -> Tokenizer {
    Tokenizer::load(Path::new(CHAT).join("tokenizer.json")).unwrap()
}

fn template(name: &str, bos: &str, eos: &str) -> ChatTemplate {
    let source = std::fs::read_to_string(Path::new(CHAT).join(format!("{name}.jinja"))).unwrap();
    ChatTemplate::new(&source, bos, eos, name).unwrap()
}

/// SmolLM2, Llama 3.1, Qwen2.5 and TinyLlama's templates: our text, ids and assistant tokens
/// equal transformers' apply_chat_template (dev/make_chat_fixtures.py).
#[test]
fn chat_templates_render_and_mask_as_transformers() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(CHAT).join("expected.json")).unwrap()).unwrap();
    let tok = tokenizer();
    let cases = expected["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for c in cases {
        let name = c["template"].as_str().unwrap();
        let t = template(name, c["bos"].as_str().unwrap_or(""), c["eos"].as_str().unwrap());
        let messages: Vec<Message> = serde_json::from_value(c["messages"].clone()).unwrap();
        assert_eq!(t.render(&messages, false).unwrap(), c["text"].as_str().unwrap(), "{name}");
        assert_eq!(t.render(&messages[..1], true).unwrap(), c["prompt"].as_str().unwrap(), "{name}");
        let enc = Encoder { tokenizer: &tok, template: Some(&t), eos: 2, train_on_prompt: false };
        let got = enc.encode(&Record::Chat(messages.clone()), "case").unwrap();
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let mask: Vec<u8> = serde_json::from_value(c["mask"].clone()).unwrap();
        assert_eq!(got.ids, ids, "{name}");
        assert_eq!(got.counted, mask.iter().map(|&m| m == 1).collect::<Vec<_>>(), "{name}: {messages:?}");
        assert!(mask.contains(&1) && mask.contains(&0), "{name}");
        let all = Encoder { train_on_prompt: true, ..enc }.encode(&Record::Chat(messages), "case").unwrap();
        assert!(all.counted.iter().all(|&c| c) && all.ids == ids);
    }
}

/// The template is found in a model folder: chat_template.jinja first, else tokenizer_config.json.
#[test]
fn templates_are_found_beside_the_tokenizer() {
    let dir = scratch("find");
    assert!(ChatTemplate::find(&dir).unwrap().is_none());
    let source = std::fs::read_to_string(Path::new(CHAT).join("tinyllama.jinja")).unwrap();
    let config = serde_json::json!({"chat_template": source, "bos_token": "<s>", "eos_token": {"content": "</s>"}});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let m = [Message { role: "user".into(), content: "hi".into() }];
    assert_eq!(
        ChatTemplate::find(&dir).unwrap().unwrap().render(&m, true).unwrap(),
        "<|user|>\nhi</s>\n<|assistant|>\n"
    );
    std::fs::write(dir.join("chat_template.jinja"), "{{ bos_token }}{{ messages[0].content.upper() }}").unwrap();
    assert_eq!(ChatTemplate::find(&dir).unwrap().unwrap().render(&m, false).unwrap(), "<s>HI");
    // raise_exception stops a render with the template's message.
    std::fs::write(dir.join("chat_template.jinja"), "{{ raise_exception('roles must alternate') }}").unwrap();
    let e = ChatTemplate::find(&dir).unwrap().unwrap().render(&m, false).unwrap_err().to_string();
    assert!(e.contains("roles must alternate") && e.contains("chat_template.jinja"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_record_format_parses_and_bad_lines_name_file_and_line() {
    let text = parse_record(r#"{"text": "a b"}"#, "f:1").unwrap();
    assert_eq!(text, Record::Text("a b".into()));
    let pc = parse_record(r#"{"prompt": "Q", "completion": "A", "id": 3}"#, "f:1").unwrap();
    assert_eq!(pc, Record::Completion { prompt: "Q".into(), completion: "A".into() });
    let chat = parse_record(r#"{"messages": [{"role": "user", "content": "x"}]}"#, "f:1").unwrap();
    assert_eq!(chat, Record::Chat(vec![Message { role: "user".into(), content: "x".into() }]));
    for (line, why) in [
        ("{\"text\": 3}", "\"text\" must be a string"),
        ("{\"prompt\": \"Q\"}", "\"completion\" is missing"),
        ("{\"messages\": [{\"role\": \"user\"}]}", "message 1: \"content\" is missing"),
        ("{\"other\": 1}", "got keys [\"other\"]"),
        ("[1, 2]", "must be a JSON object"),
        ("{\"text\": \"unterminated}", "not valid JSON"),
    ] {
        let e = parse_record(line, "data.jsonl:7").unwrap_err().to_string();
        assert!(e.contains("data.jsonl:7") && e.contains(why), "{line}: {e}");
    }
    let dir = scratch("read");
    let path = dir.join("d.jsonl");
    std::fs::write(&path, "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n{\"text\": \"three\"\n").unwrap();
    let e = read_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains(&format!("{}:4", path.display())), "{e}");
    std::fs::write(&path, "\n  \n").unwrap();
    let e = read_jsonl(&path).unwrap_err().to_string();
    assert!(e.contains("no records") && e.contains("d.jsonl"), "{e}");
    std::fs::write(&path, "{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n").unwrap();
    let lines = read_jsonl(&path).unwrap();
    assert_eq!(lines.iter().map(|l| l.number).collect::<Vec<_>>(), [1, 3]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Text and completions end with EOS; a completion record counts only the completion's tokens.
#[test]
fn text_and_completion_records_encode_with_eos_and_their_mask() {
    let tok = tokenizer();
    let enc = Encoder { tokenizer: &tok, template: None, eos: 2, train_on_prompt: false };
    let t = enc.encode(&Record::Text("To be, or not".into()), "x").unwrap();
    assert_eq!(t.ids, [tok.encode("To be, or not"), vec![2]].concat());
    assert!(t.counted.iter().all(|&c| c));
    let r = Record::Completion { prompt: "Question: why?".into(), completion: " Because.".into() };
    let c = enc.encode(&r, "x").unwrap();
    let (p, a) = (tok.encode("Question: why?"), tok.encode(" Because."));
    assert_eq!(c.ids, [p.clone(), a.clone(), vec![2]].concat());
    assert_eq!(c.counted, [vec![false; p.len()], vec![true; a.len() + 1]].concat());
    let all = Encoder { train_on_prompt: true, ..enc }.encode(&r, "x").unwrap();
    assert!(all.counted.iter().all(|&c| c));
    // A chat record without a template says what is missing.
    let e = enc.encode(&Record::Chat(vec![Message { role: "user".into(), content: "x".into() }]), "d.jsonl:5");
    let e = e.unwrap_err().to_string();
    assert!(e.contains("d.jsonl:5") && e.contains("chat template"), "{e}");
}

/// Random records packed greedily, against a plain reference of the rule.
#[test]
fn packing_keeps_records_whole_pads_and_cuts() {
    let mut rng = Rng::new(7);
    let records: Vec<Encoded> = (0..53)
        .map(|_| {
            let n = 1 + rng.below(30) as usize;
            Encoded {
                ids: (0..n).map(|_| 3 + rng.below(300) as u32).collect(),
                counted: (0..n).map(|_| rng.below(3) > 0).collect(),
            }
        })
        .collect();
    let w = 17;
    for packed in [true, false] {
        let p = pack(&records, w, packed, 1);
        let (mut ids, mut counted, mut cut, mut fill) = (Vec::new(), Vec::new(), 0, 0);
        for r in &records {
            let n = r.ids.len().min(w);
            cut += (n < r.ids.len()) as usize;
            if fill > 0 && (!packed || fill + n > w) {
                ids.extend(std::iter::repeat_n(1, w - fill));
                counted.extend(std::iter::repeat_n(false, w - fill));
                fill = 0;
            }
            for i in 0..n {
                ids.push(r.ids[i]);
                counted.push(i > 0 && r.counted[i]);
            }
            fill += n;
        }
        ids.extend(std::iter::repeat_n(1, (w - fill) % w));
        counted.extend(std::iter::repeat_n(false, (w - fill) % w));
        assert_eq!((p.ids.clone(), p.counted.clone(), p.cut), (ids, counted, cut), "packed {packed}");
        assert!(p.cut > 0 && p.ids.len().is_multiple_of(w));
        if !packed {
            assert_eq!(p.windows(w), records.len());
        }
    }
}

/// The token and mask files give windows whose uncounted targets are IGNORE_INDEX.
#[test]
fn masked_windows_round_trip_through_their_files() {
    let dir = scratch("masked");
    let records: Vec<Encoded> = (0..9)
        .map(|r| Encoded {
            ids: (0..5 + r).map(|i| (i * 7 + r) as u32 % 50).collect(),
            counted: (0..5 + r).map(|i| i % 3 != 0).collect(),
        })
        .collect();
    let p = pack(&records, 9, true, 0);
    MaskedDataset::create(&dir.join("train.bin"), &p).unwrap();
    let ds = MaskedDataset::open(&dir.join("train.bin"), 8, 50).unwrap();
    assert_eq!(ds.num_windows(), p.ids.len() / 9);
    let mut counted = 0;
    for i in 0..ds.num_windows() {
        let (x, y) = ds.window(i);
        assert_eq!(x, &p.ids[i * 9..i * 9 + 8]);
        for (t, &got) in y.iter().enumerate() {
            let want = if p.counted[i * 9 + t + 1] { p.ids[i * 9 + t + 1] } else { IGNORE_INDEX };
            assert_eq!(got, want);
            counted += (want != IGNORE_INDEX) as usize;
        }
    }
    assert_eq!(ds.counted(), counted);
    let (x, y) = ds.batch_at(3, 4, 11);
    assert_eq!((x.len(), y.len()), (32, 32));
    assert_eq!(ds.batch_at(3, 4, 11), (x, y));
    // Another --seq does not fit these windows, and ids beyond the vocabulary are refused.
    let e = MaskedDataset::open(&dir.join("train.bin"), 7, 50).unwrap_err().to_string();
    assert!(e.contains("--seq") && e.contains("train.bin"), "{e}");
    assert!(MaskedDataset::open(&dir.join("train.bin"), 8, 40).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

device_tests!(the_masked_loss_is_the_mean_over_counted_targets_across_micro_batches);

fn tiny() -> ModelConfig {
    ModelConfig {
        vocab_size: 61,
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

/// Mean -log p(target) over the counted targets, from the full logits in f64.
fn reference_loss(t: &Trainer, x: &[u32], y: &[u32], batch: usize, seq: usize) -> f64 {
    let v = t.model.config.vocab_size;
    let x = Tensor::from_u32_on(x, &[batch, seq], t.model.device()).unwrap();
    let logits = no_grad(|| t.model.forward(&x, batch, seq, 0)).unwrap().to_vec();
    let (mut sum, mut n) = (0.0, 0);
    for (r, &target) in y.iter().enumerate().filter(|(_, &t)| t != IGNORE_INDEX) {
        let row: Vec<f64> = logits[r * v..(r + 1) * v].iter().map(|&l| l as f64).collect();
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        sum += lse - row[target as usize];
        n += 1;
    }
    sum / n as f64
}

/// The step's loss is the mean over counted targets whatever the micro-batches hold: with
/// --grad-accum a micro-batch weighs by its counted targets, and one with none adds nothing.
fn the_masked_loss_is_the_mean_over_counted_targets_across_micro_batches(device: Device) {
    let (batch, seq) = (4, 9);
    let mut rng = Rng::new(3);
    let x: Vec<u32> = (0..batch * seq).map(|_| rng.below(61) as u32).collect();
    let mut y: Vec<u32> = (0..batch * seq).map(|_| rng.below(61) as u32).collect();
    // Rows 0-1 (micro-batch 0 of 2) keep 2 targets; rows 2-3 keep all but 3.
    for (i, t) in y.iter_mut().enumerate() {
        if (i < 2 * seq && i % 7 != 3) || (i >= 2 * seq && i % 5 == 0) {
            *t = IGNORE_INDEX;
        }
    }
    let step = |accum: usize, y: &[u32]| {
        let cfg = TrainingConfig { grad_accum_steps: accum, learning_rate: 1e-3, total_steps: 1, ..Default::default() };
        let mut t = Trainer::new_on(tiny(), cfg, device).unwrap();
        let want = reference_loss(&t, &x, y, batch, seq);
        let (loss, norm) = t.train_step(&x, y, batch, seq).unwrap();
        (want, loss as f64, norm as f64)
    };
    let (want, one, norm1) = step(1, &y);
    let (_, two, norm2) = step(2, &y);
    for (got, what) in [(one, "one micro-batch"), (two, "two micro-batches")] {
        assert!((got - want).abs() < 2e-5 * want, "{what}: {got} vs {want}");
    }
    assert!((norm1 - norm2).abs() < 1e-4 * norm1, "gradient norms {norm1} vs {norm2}");
    // A micro-batch with nothing counted: the loss and gradients are those of the other alone.
    let mut y2 = y.clone();
    y2[..2 * seq].fill(IGNORE_INDEX);
    let (want, two, norm) = step(2, &y2);
    assert!((two - want).abs() < 2e-5 * want && norm.is_finite() && norm > 0.0, "{two} vs {want}, norm {norm}");
}

fn irontensor(args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_irontensor"));
    cmd.args(args).env_remove("IRONTENSOR_DEVICE").env("IRONTENSOR_CACHE_DIR", "off");
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout.to_string(), format!("{stdout}{stderr}"))
}

/// tests/fixtures/llama-tiny with the chat fixtures' tokenizer and SmolLM2's template, as a
/// downloaded instruct model's folder.
fn chat_model(dir: &Path) -> PathBuf {
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(Path::new("tests/fixtures/llama-tiny").join(f), hf.join(f)).unwrap();
    }
    std::fs::copy(Path::new(CHAT).join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    let source = std::fs::read_to_string(Path::new(CHAT).join("smollm2.jinja")).unwrap();
    let config = serde_json::json!({"chat_template": source, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"});
    std::fs::write(hf.join("tokenizer_config.json"), config.to_string()).unwrap();
    hf
}

/// `train --init` on JSONL of every format (3 steps), then `eval` on it against the model's
/// logits in f64, and `generate --chat` against the library's greedy reply.
#[test]
fn train_eval_and_chat_on_jsonl_through_the_cli() {
    let dir = scratch("cli");
    let hf = chat_model(&dir);
    let data = dir.join("data.jsonl");
    let mut lines: Vec<String> = (0..11)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"messages": [{{"role": "user", "content": "Count to {i}."}}, {{"role": "assistant", "content": "{}"}}]}}"#, "1 2 3 ".repeat(i % 4 + 1)),
            1 => format!(r#"{{"prompt": "Say {i}:", "completion": " {i}, said."}}"#),
            _ => format!(r#"{{"text": "Line {i} of plain text."}}"#),
        })
        .collect();
    lines.push(format!(r#"{{"text": "{}"}}"#, "a long record that will not fit one window ".repeat(8)));
    std::fs::write(&data, lines.join("\n")).unwrap();
    let run = dir.join("run");
    let (d, r, h) = (data.to_str().unwrap(), run.to_str().unwrap(), hf.to_str().unwrap());
    let train = ["train", "--init", h, "--data", d, "--device", "cpu", "--steps", "3", "--batch", "2", "--seq", "96"];
    let (ok, _, out) = irontensor(&[&train[..], &["--sample-tokens", "0", "--out", r]].concat());
    assert!(ok, "{out}");
    for want in ["every 10th record", "of 12 records are longer than --seq + 1 = 97", "done: 3 steps"] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    assert!(run.join("tokenizer_config.json").exists());
    let cut: usize = out.split("warning: ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    // eval: the loss over the completion and assistant tokens, against f64 on the full logits.
    let (ok, _, out) =
        irontensor(&["eval", "--checkpoint", r, "--data", d, "--device", "cpu", "--seq", "96", "--batch", "3"]);
    assert!(ok, "{out}");
    let got: f64 = out.split("loss ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let (model, tok) = irontensor::cli::load_model(&run, Device::Cpu).unwrap();
    let text = irontensor::cli::ModelText::find(&run, &tok).unwrap();
    assert_eq!(text.stops, [2]);
    // A checkpoint finds the template its run kept; a model folder looks only in itself.
    let ckpt = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.path()).max().unwrap();
    assert!(irontensor::cli::ModelText::find(&ckpt, &tok).unwrap().template.is_some());
    assert!(irontensor::cli::ModelText::find(&dir.join("hf").join("none"), &tok).unwrap().template.is_none());
    let enc = Encoder { tokenizer: &tok, template: text.template.as_ref(), eos: text.eos, train_on_prompt: false };
    let p = pack(&irontensor::cli::encode_file(&data, &enc).unwrap(), 97, true, text.eos);
    assert_eq!(p.cut, cut);
    assert!(cut >= 1 && p.counted.iter().filter(|&&c| c).count() > 100);
    let (mut sum, mut n) = (0.0, 0);
    let t = Trainer::with_model(model, TrainingConfig::default()).unwrap();
    for w in 0..p.windows(97) {
        let ids = &p.ids[w * 97..(w + 1) * 97];
        let y: Vec<u32> = (1..97).map(|i| if p.counted[w * 97 + i] { ids[i] } else { IGNORE_INDEX }).collect();
        let k = y.iter().filter(|&&t| t != IGNORE_INDEX).count();
        if k > 0 {
            sum += reference_loss(&t, &ids[..96], &y, 1, 96) * k as f64;
            n += k;
        }
    }
    let want = sum / n as f64;
    assert!((got - want).abs() < 1e-4 * want, "eval {got} vs {want}");
    // generate --chat prints the greedy reply alone.
    let (ok, stdout, out) = irontensor(&[
        "generate",
        "--checkpoint",
        r,
        "--chat",
        "Count to 3.",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{out}");
    let m = [Message { role: "user".into(), content: "Count to 3.".into() }];
    let prompt = tok.encode(&text.template.as_ref().unwrap().render(&m, true).unwrap());
    let greedy = irontensor::infer::SamplingConfig { temperature: 0.0, max_tokens: 12, ..Default::default() };
    let made = irontensor::infer::generate(&t.model, &prompt, &greedy, &text.stops, true, |_| {}).unwrap();
    let reply: Vec<u32> = made.into_iter().filter(|t| !text.stops.contains(t)).collect();
    assert_eq!(stdout, format!("{}\n", tok.decode(&reply)));
    assert!(!stdout.contains("<|im_start|>"));
    // A model without a template cannot chat; a bad line stops training before it starts.
    let plain = dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(hf.join(f), plain.join(f)).unwrap();
    }
    let plain = plain.to_str().unwrap();
    let (ok, _, out) = irontensor(&["generate", "--checkpoint", plain, "--chat", "hi", "--device", "cpu"]);
    assert!(!ok && out.contains("no chat template"), "{out}");
    std::fs::write(&data, [lines[0].as_str(), "{\"prompt\": 1}", lines[1].as_str()].join("\n")).unwrap();
    let bad = dir.join("bad");
    let (ok, _, out) = irontensor(&[&train[..], &["--out", bad.to_str().unwrap()]].concat());
    assert!(!ok && out.contains(&format!("{d}:2")) && out.contains("\"prompt\" must be a string"), "{out}");
    assert!(!bad.join("checkpoints").exists() && !bad.join("train.bin").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every 10th record validates (the last of fewer than 10); one record is too few.
#[test]
fn every_tenth_record_validates() {
    use irontensor::cli::{prepare_jsonl, FinetuneOptions};
    let dir = scratch("split");
    let tok = tokenizer();
    let data = dir.join("d.jsonl");
    let opts = FinetuneOptions { train_on_prompt: false, no_pack: true };
    // With one record a window, a window's text starts with its record and EOS.
    let records = |ds: &MaskedDataset| -> Vec<usize> {
        (0..ds.num_windows())
            .map(|w| {
                let text = tok.decode(&ds.window(w).0);
                (1..=23).find(|i| text.starts_with(&format!("record {i}<|endoftext|>"))).unwrap()
            })
            .collect()
    };
    for (n, want_val) in [(23, vec![10, 20]), (4, vec![4])] {
        let lines: Vec<String> = (1..=n).map(|i| format!(r#"{{"text": "record {i}"}}"#)).collect();
        std::fs::write(&data, lines.join("\n")).unwrap();
        let p = prepare_jsonl(&data, &dir.join(format!("run{n}")), 24, 320, Some((&tok, &dir)), opts).unwrap();
        assert_eq!(records(&p.val), want_val);
        let train: Vec<usize> = (1..=n).filter(|i| !want_val.contains(i)).collect();
        assert_eq!(records(&p.train), train);
    }
    std::fs::write(&data, r#"{"text": "alone"}"#).unwrap();
    let e = prepare_jsonl(&data, &dir.join("one"), 12, 320, Some((&tok, &dir)), opts).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The reply stops at the tokenizer_config's eos_token and at every eos_token_id of
/// generation_config.json (Llama 3 lists <|end_of_text|> and <|eot_id|>).
#[test]
fn stop_tokens_come_from_the_model_configs() {
    let dir = scratch("stops");
    let tok = tokenizer();
    let config = serde_json::json!({"eos_token": "<|eot_id|>", "chat_template": "{{ messages[0].content }}"});
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [8, 0, 4]}"#).unwrap();
    let text = irontensor::cli::ModelText::find(&dir, &tok).unwrap();
    assert_eq!(text.eos, tok.inner().token_to_id("<|eot_id|>").unwrap());
    assert_eq!(text.eos, 4);
    assert_eq!(text.stops, [0, 4, 8]);
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": 7}"#).unwrap();
    assert_eq!(irontensor::cli::ModelText::find(&dir, &tok).unwrap().stops, [4, 7]);
    std::fs::remove_dir_all(&dir).unwrap();
}
