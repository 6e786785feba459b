//! The `irontensor` binary: `info`, and the environment variables it reads at start.

use std::process::Command;

fn irontensor(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_irontensor"));
    cmd.args(args).env_remove("IRONTENSOR_DEVICE").env_remove("IRONTENSOR_SYNC_GPU");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn info_reports_devices_and_settings() {
    let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "cpu")]);
    assert!(ok, "{out}");
    assert!(out.contains("default device: cpu"), "{out}");
    if std::env::var("IRONTENSOR_REQUIRE_GPU").as_deref() == Ok("1") {
        assert!(out.contains("first GPU result [2.0, 4.0, 6.0]"), "{out}");
        let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "gpu"), ("IRONTENSOR_SYNC_GPU", "1")]);
        assert!(ok && out.contains("default device: gpu"), "{out}");
        assert!(out.contains("(IRONTENSOR_SYNC_GPU): true"), "{out}");
    }
}

#[test]
fn a_bad_device_name_is_a_clear_error() {
    let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "tpu")]);
    assert!(!ok);
    assert!(out.contains("IRONTENSOR_DEVICE=tpu") && out.contains("cpu, gpu or auto"), "{out}");
}

/// A run directory with a tiny model trained for a few steps on a slice of TinyShakespeare.
fn tiny_run(dir: &std::path::Path) -> (bool, String) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/tinyshakespeare.txt")).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let data = dir.join("slice.txt");
    std::fs::write(&data, &text[..40_000]).unwrap();
    let mut cfg = irontensor::ModelConfig::tiny();
    (
        cfg.vocab_size,
        cfg.hidden_dim,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.intermediate_dim,
        cfg.max_seq_len,
    ) = (320, 32, 2, 4, 2, 64, 32);
    let cfg_path = dir.join("model.json");
    std::fs::write(&cfg_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    let out = dir.join("run");
    let args = [
        "train",
        "--data",
        data.to_str().unwrap(),
        "--config",
        cfg_path.to_str().unwrap(),
        "--device",
        "cpu",
        "--steps",
        "6",
        "--batch",
        "2",
        "--seq",
        "16",
        "--out",
        out.to_str().unwrap(),
        "--sample-tokens",
        "20",
    ];
    irontensor(&args, &[])
}

#[test]
fn train_then_generate_end_to_end() {
    let dir = std::env::temp_dir().join(format!("irontensor-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, out) = tiny_run(&dir);
    assert!(ok, "{out}");
    let run = dir.join("run");
    for f in [
        "tokenizer.json",
        "train.bin",
        "val.bin",
        "train_log.jsonl",
        "loss.svg",
        "checkpoints/step_00000006/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f} missing after training:\n{out}");
    }
    assert!(
        out.contains("validation loss") && out.contains("nats/character") && out.contains("--- sample ---"),
        "{out}"
    );
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l.get("loss").is_some()).count(), 6, "one log line per step:\n{log}");
    assert!(lines.iter().any(|l| l.get("val_loss").is_some()));
    assert!(std::fs::read_to_string(run.join("loss.svg")).unwrap().starts_with("<svg"));
    // Generate from the run directory: greedy text, the same with and without the KV cache.
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "generate",
            "--checkpoint",
            run.to_str().unwrap(),
            "--prompt",
            "ROMEO:",
            "--max-tokens",
            "15",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ];
        a.extend_from_slice(extra);
        let (ok, out) = irontensor(&a, &[]);
        assert!(ok, "{out}");
        out
    };
    let cached = gen(&[]);
    assert!(cached.starts_with("ROMEO:") && cached.len() > "ROMEO:".len(), "{cached}");
    assert_eq!(cached, gen(&["--no-cache"]));
    // A second run into the same directory needs --resume; with it, training carries on.
    let (ok, out) = tiny_run(&dir);
    assert!(!ok && out.contains("--resume"), "{out}");
    let (ok, out) = irontensor(
        &[
            "train",
            "--resume",
            "--device",
            "cpu",
            "--steps",
            "8",
            "--batch",
            "2",
            "--seq",
            "16",
            "--out",
            run.to_str().unwrap(),
            "--data",
            dir.join("slice.txt").to_str().unwrap(),
            "--sample-tokens",
            "0",
        ],
        &[],
    );
    assert!(ok && out.contains("resuming from") && out.contains("8 steps"), "{out}");
    assert!(run.join("checkpoints/step_00000008").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_data_says_what_to_pass() {
    let (ok, out) = irontensor(&["train", "--data", "/nonexistent/input.txt", "--device", "cpu"], &[]);
    assert!(!ok && out.contains("--data /nonexistent/input.txt: no such file"), "{out}");
}
