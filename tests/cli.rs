//! The `irontensor` binary: `info`, the environment variables it reads at start, training and
//! generation end to end, and the pipeline cache across runs.

mod common;

use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `generate`'s output less its timing line (which differs run to run).
fn without_timings(out: &str) -> String {
    out.lines().filter(|l| !l.starts_with("prompt: ")).map(|l| format!("{l}\n")).collect()
}

fn irontensor(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_irontensor"));
    cmd.args(args).env_remove("IRONTENSOR_DEVICE").env_remove("IRONTENSOR_SYNC_GPU");
    cmd.env("IRONTENSOR_CACHE_DIR", "off"); // tests leave the user's pipeline cache alone
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

/// The CLI reads every variable first (`Settings::from_env`): a bad value stops it before
/// anything runs, with a message that names the variable and what it may be.
#[test]
fn a_bad_variable_stops_the_cli_first() {
    for (name, value, allowed) in
        [("IRONTENSOR_PROFILE", "yes", "1 (on) or 0 (off)"), ("IRONTENSOR_DIST_TIMEOUT", "soon", "seconds")]
    {
        let (ok, out) = irontensor(&["info"], &[(name, value), ("IRONTENSOR_DEVICE", "cpu")]);
        assert!(!ok, "{name}={value} was accepted:\n{out}");
        assert!(out.contains(&format!("{name}={value}")) && out.contains(allowed), "{out}");
        assert!(!out.contains("default device"), "info ran despite the bad value:\n{out}");
    }
}

/// `--device auto` on a machine whose only Vulkan driver is software (lavapipe here) or none:
/// the run starts on the CPU fast, without creating a GPU device it will not use, and the
/// driver's chatter ("XDG_RUNTIME_DIR is invalid") never reaches the terminal.
#[test]
fn an_auto_run_starts_fast_and_quietly() {
    let dir = std::env::temp_dir().join(format!("irontensor-cli-auto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, cfg) = tiny_setup(&dir);
    let out = dir.join("run");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_irontensor"));
    cmd.args(["train", "--data", data.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--device", "auto"]);
    cmd.args(["--batch", "2", "--seq", "16", "--sample-tokens", "0", "--steps", "1", "--out", out.to_str().unwrap()]);
    cmd.env_remove("XDG_RUNTIME_DIR").env_remove("IRONTENSOR_DEVICE").env("IRONTENSOR_CACHE_DIR", "off");
    let result = cmd.output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&result.stderr).to_string();
    assert!(result.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "driver chatter on the terminal:\n{stderr}");
    let ms: u64 = stderr
        .split("the first step began ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no start-up line:\n{stderr}"));
    if !stderr.contains("on gpu") {
        // Loose: this runs beside other tests on a shared machine. A CPU start is ~0.15 s alone,
        // adapter enumeration with lavapipe ~0.15-0.5 s more, a device created on it 0.1-1 s more.
        assert!(ms < 2000, "the first step began {ms} ms after start:\n{stderr}");
    }
}

/// A slice of TinyShakespeare and a tiny model config in `dir`: (data file, config file).
fn tiny_setup(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(common::SHAKESPEARE).unwrap();
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
    (data, cfg_path)
}

/// `train` of the tiny setup's data and config on the CPU: 2 × 16 tokens, `steps` steps, no sample.
fn tiny_train<'a>(data: &'a Path, cfg: &'a Path, steps: &'a str) -> Vec<&'a str> {
    let mut a = vec!["train", "--data", data.to_str().unwrap(), "--config", cfg.to_str().unwrap()];
    a.extend(["--device", "cpu", "--batch", "2", "--seq", "16", "--sample-tokens", "0", "--steps", steps]);
    a
}

/// A run directory with a tiny model trained for a few steps on a slice of TinyShakespeare.
fn tiny_run(dir: &Path) -> (bool, String) {
    let (data, cfg_path) = tiny_setup(dir);
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
        "tokens.json",
        "train-00000.bin",
        "val-00000.bin",
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
    // Start-up: process start to the first step, on stderr and in the first log line.
    assert!(out.contains("start-up: the first step began"), "{out}");
    let (began, done) = (lines[0]["startup_ms"].as_f64().unwrap(), lines[0]["first_step_done_ms"].as_f64().unwrap());
    assert!(0.0 < began && began < done, "{}", lines[0]);
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
        assert!(out.contains("prompt: ") && out.contains("tokens/s"), "no timings: {out}");
        without_timings(&out)
    };
    let cached = gen(&[]);
    assert!(cached.starts_with("ROMEO:") && cached.len() > "ROMEO:".len(), "{cached}");
    assert_eq!(cached, gen(&["--no-cache"]));
    // --batch 2: the prompt continued twice at once; greedy, each is the single run's text.
    let two = gen(&["--batch", "2"]);
    assert!(two.contains("--- 1 of 2 (seed 0) ---") && two.contains("--- 2 of 2 (seed 1) ---"), "{two}");
    assert_eq!(two.matches(cached.trim()).count(), 2, "{two}\nvs\n{cached}");
    // Exported as an f32 GGUF, the model writes the same greedy text; a bad --type stops first.
    let gguf = dir.join("model.gguf");
    let (g, r) = (gguf.to_str().unwrap(), run.to_str().unwrap());
    let (ok, out) = irontensor(&["export", "--checkpoint", r, "--gguf", g, "--type", "f32"], &[]);
    assert!(ok && out.contains("wrote"), "{out}");
    let greedy = ["--prompt", "ROMEO:", "--max-tokens", "15", "--temperature", "0", "--device", "cpu"];
    let (ok, out) = irontensor(&[&["generate", "--checkpoint", g][..], &greedy[..]].concat(), &[]);
    assert!(ok, "{out}");
    assert_eq!(without_timings(&out), cached, "generate from the GGUF export");
    let (ok, out) = irontensor(&["export", "--checkpoint", "no-such-run", "--gguf", g, "--type", "q4"], &[]);
    assert!(!ok && out.contains("--type") && !out.contains("no-such-run"), "{out}");
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

/// `train --seed`: the same seed repeats a run exactly, another one changes it.
#[test]
fn seed_repeats_or_changes_the_run() {
    let dir = std::env::temp_dir().join(format!("irontensor-cli-seed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, cfg) = tiny_setup(&dir);
    let run = |seed: &str, name: &str| {
        let out = dir.join(name);
        let mut a = tiny_train(&data, &cfg, "3");
        a.extend(["--out", out.to_str().unwrap(), "--seed", seed]);
        let (ok, text) = irontensor(&a, &[]);
        assert!(ok, "{text}");
        let done = text.lines().find(|l| l.starts_with("done:")).unwrap_or_else(|| panic!("{text}"));
        done.split("validation loss ").nth(1).unwrap().split(' ').next().unwrap().to_string()
    };
    let (one, again, two) = (run("1", "a"), run("1", "b"), run("2", "c"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(one, again, "the same seed gave another validation loss");
    assert_ne!(one, two, "seeds 1 and 2 gave the same validation loss");
}

#[test]
fn missing_data_says_what_to_pass() {
    let (ok, out) = irontensor(&["train", "--data", "/nonexistent/input.txt", "--device", "cpu"], &[]);
    assert!(!ok && out.contains("--data /nonexistent/input.txt: no such file"), "{out}");
}

/// Steps logged so far in a run's train_log.jsonl.
fn logged_steps(out: &Path) -> Vec<u64> {
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect()
}

/// Ctrl-C (SIGINT) while training saves a checkpoint and exits cleanly; --resume carries on
/// from that checkpoint with the next step.
#[cfg(unix)]
#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_carries_on() {
    let dir = std::env::temp_dir().join(format!("irontensor-sigint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, cfg) = tiny_setup(&dir);
    let out = dir.join("run");
    let args = |steps: &str| {
        let mut a = tiny_train(&data, &cfg, steps);
        a.extend(["--out", out.to_str().unwrap()]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let stderr_path = dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_irontensor"))
        .args(args("1000000"))
        .env_remove("IRONTENSOR_DEVICE")
        .stdout(std::fs::File::create(dir.join("stdout.txt")).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let output = || {
        std::fs::read_to_string(dir.join("stdout.txt")).unwrap_or_default()
            + &std::fs::read_to_string(&stderr_path).unwrap_or_default()
    };
    // Wait (bounded) until a few steps are logged: by then the Ctrl-C handler is installed.
    let start = Instant::now();
    while logged_steps(&out).len() < 3 {
        if start.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("training did not log 3 steps in time:\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("training did not stop within 60 s of SIGINT:\n{}", output());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = output();
    assert!(status.success(), "exit status {status} after SIGINT:\n{text}");
    assert!(text.contains("interrupted: saved") && text.contains("--resume"), "{text}");
    let steps = logged_steps(&out);
    let n = steps.len() as u64;
    assert_eq!(steps, (0..n).collect::<Vec<_>>(), "one log line per step before the interrupt");
    let ckpt = out.join(format!("checkpoints/step_{n:08}"));
    assert!(ckpt.join("trainer.json").exists(), "no checkpoint at step {n}:\n{text}");
    // Resume: training carries on from step n to n + 3.
    let total = (n + 3).to_string();
    let (ok, text) = irontensor(&args(&total).iter().map(String::as_str).chain(["--resume"]).collect::<Vec<_>>(), &[]);
    assert!(ok && text.contains("resuming from") && text.contains(&format!("at step {n}")), "{text}");
    assert_eq!(logged_steps(&out), (0..n + 3).collect::<Vec<_>>(), "the resumed run logs steps {n}..{}", n + 3);
    assert!(out.join(format!("checkpoints/step_{:08}", n + 3)).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `irontensor bench` prints one JSON object per result with the keys dev/bench_compare.py reads.
#[test]
fn bench_prints_json_lines() {
    let json_lines = |out: &str| -> Vec<serde_json::Value> {
        out.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (ok, out) = irontensor(
        &["bench", "train", "--workload", "seed-tiny", "--device", "cpu", "--batch", "1", "--seq", "8"]
            .into_iter()
            .chain(["--steps", "2", "--warmup", "1", "--checkpoint-activations"])
            .collect::<Vec<_>>(),
        &[],
    );
    assert!(ok, "{out}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let r = &lines[0];
    assert_eq!(r["params"], irontensor::bench::workload("seed-tiny").unwrap().model.num_params());
    assert_eq!(r["checkpoint_activations"], true, "{r}");
    for k in
        ["tokens_per_s", "ms_per_step", "forward_ms", "backward_ms", "optimizer_ms", "peak_bytes", "expected_bytes"]
    {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k} missing in {r}");
    }
    let (ok, out) = irontensor(&["bench", "train", "--workload", "gpt5", "--device", "cpu"], &[]);
    assert!(!ok && out.contains("seed-tiny, shakespeare"), "{out}");
    for (what, shapes, n) in [("matmul", "7x5x3", 1), ("attention", "1x2x9x8", 2), ("cross-entropy", "9x8x33", 2)] {
        let (ok, out) = irontensor(&["bench", what, "--device", "cpu", "--shapes", shapes], &[]);
        assert!(ok, "{out}");
        let lines = json_lines(&out);
        assert_eq!(lines.len(), n, "{out}");
        assert!(lines.iter().all(|l| l["impl"] == "irontensor" && l["ms"].as_f64().is_some()), "{out}");
    }
    let (ok, out) = irontensor(&["bench", "attention", "--device", "cpu", "--shapes", "1x2x9"], &[]);
    assert!(!ok && out.contains("BxHxTxD"), "{out}");
}

/// IRONTENSOR_CACHE_DIR: a GPU run writes the pipeline cache file, the next run loads it, a
/// damaged or foreign file is ignored (and replaced), an unwritable directory is one warning,
/// and `off` turns the cache off. Lavapipe (Mesa 22.3) has the feature, but its cache data is only
/// Vulkan's 32-byte header: this checks the file handling, not that compiling gets faster.
#[test]
fn pipeline_cache_is_written_reused_and_bad_files_are_ignored() {
    if common::gpu().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("irontensor-pcache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache_dir = dir.join("cache"); // made by the first run
    let info = |cache: &str| {
        let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "gpu"), ("IRONTENSOR_CACHE_DIR", cache)]);
        assert!(ok && out.contains("first GPU result [2.0, 4.0, 6.0]"), "{out}");
        out.lines().find(|l| l.contains("pipeline cache:")).unwrap_or_else(|| panic!("{out}")).to_string()
    };
    let cache = cache_dir.to_str().unwrap();
    let line = info(cache);
    if line.contains("not available") {
        eprintln!("this adapter has no pipeline cache (wgpu has one on Vulkan only): {line}");
        return;
    }
    assert!(line.ends_with("(empty)"), "{line}");
    let file = std::fs::read_dir(&cache_dir).unwrap().next().expect("a cache file after the first run").unwrap().path();
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 32, "{} bytes", bytes.len());
    // The second run loads it: the data, without its 32-byte SHA-256.
    assert!(info(cache).ends_with(&format!("(loaded {} bytes)", bytes.len() - 32)), "{}", info(cache));
    // A damaged file (checksum wrong) is ignored and replaced by a good one.
    std::fs::write(&file, b"not a pipeline cache").unwrap();
    assert!(info(cache).ends_with("(ignored a damaged file)"));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // A file from another device (wgpu's header says so; the checksum is right) is ignored too.
    let mut foreign = bytes[..bytes.len() - 32].to_vec();
    foreign[20] ^= 0xff; // in the adapter key of wgpu's header
    foreign.extend_from_slice(&sha2::Sha256::digest(&foreign));
    std::fs::write(&file, &foreign).unwrap();
    assert!(info(cache).ends_with("(ignored a file from another device, driver or wgpu)"));
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // Garbage with a right checksum reaches wgpu, which falls back to an empty cache.
    let mut garbage = vec![7u8; 200];
    garbage.extend_from_slice(&sha2::Sha256::digest(&garbage));
    std::fs::write(&file, &garbage).unwrap();
    info(cache);
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // An unwritable directory: one warning, and the run goes on.
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let (ok, out) = irontensor(
        &["info"],
        &[("IRONTENSOR_DEVICE", "gpu"), ("IRONTENSOR_CACHE_DIR", blocker.join("cache").to_str().unwrap())],
    );
    assert!(ok && out.matches("warning: pipeline cache not saved").count() == 1, "{out}");
    for off in ["off", ""] {
        assert!(info(off).ends_with("off (IRONTENSOR_CACHE_DIR)"), "{}", info(off));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every flag of every command has a help line; every flag that takes a value says its default.
#[test]
fn every_flag_has_help_with_its_default() {
    let commands: &[&[&str]] = &[
        &["train"],
        &["generate"],
        &["tokenize"],
        &["export"],
        &["eval"],
        &["bench", "train"],
        &["bench", "matmul"],
        &["bench", "attention"],
        &["bench", "cross-entropy"],
    ];
    for cmd in commands {
        let (ok, help) = irontensor(&[cmd, &["--help"][..]].concat(), &[]);
        assert!(ok, "{help}");
        // Option blocks: a line starting with `--flag` (or `-h, --help`) and its continuation lines.
        let mut blocks: Vec<String> = Vec::new();
        for line in help.lines().skip_while(|l| !l.starts_with("Options:")).skip(1) {
            let t = line.trim_start();
            if t.starts_with("--") || t.starts_with("-h") || t.starts_with("-V") {
                blocks.push(t.to_string());
            } else if let Some(b) = blocks.last_mut() {
                *b += " ";
                *b += t;
            }
        }
        assert!(blocks.len() >= 2, "{cmd:?}: no options found in\n{help}");
        for b in &blocks {
            let flag = b.split_whitespace().next().unwrap();
            let words = b.split_whitespace().filter(|w| !w.starts_with('-') && !w.starts_with('<')).count();
            assert!(words >= 2, "{cmd:?} {flag}: no help text: {b}");
            if b.contains(" <") {
                assert!(b.contains("default"), "{cmd:?} {flag}: the help does not say the default: {b}");
            }
        }
    }
}

/// Each out-of-range flag stops the command before any work, naming the flag and its range.
#[test]
fn bad_flags_are_refused_before_any_work() {
    let dir = std::env::temp_dir().join(format!("irontensor-cli-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, cfg) = tiny_setup(&dir);
    let out = dir.join("run");
    let (data, cfg, out_s) = (data.to_str().unwrap(), cfg.to_str().unwrap(), out.to_str().unwrap());
    let train = ["train", "--data", data, "--config", cfg, "--device", "cpu", "--out", out_s, "--sample-tokens", "0"];
    let cases: &[(&[&str], &str)] = &[
        (&["--lr", "nan"], "--lr NaN: must be a finite number > 0"),
        (&["--lr", "0"], "--lr 0: must be a finite number > 0"),
        (&["--lr", "inf"], "--lr inf: must be a finite number > 0"),
        (&["--batch", "0"], "--batch 0: must be at least 1"),
        (&["--seq", "0"], "--seq 0: must be at least 1"),
        (&["--seq", "33"], "--seq 33: must be between 1 and the model's max_seq_len 32"),
        (&["--steps", "0"], "--steps 0: must be at least 1"),
        (&["--grad-accum", "0"], "--grad-accum 0: must be at least 1"),
        (&["--save-interval", "0"], "--save-interval 0: must be at least 1"),
        (&["--batch", "3", "--grad-accum", "2"], "--batch 3: must be divisible by --grad-accum 2"),
        (&["--optimizer", "sgd"], "--optimizer sgd: expected adamw, adamw8bit, lion or sophia"),
        (&["--optimizer", "sophia", "--sophia-rho=-1"], "--sophia-rho -1: must be a finite number > 0"),
        (&["--optimizer", "sophia", "--sophia-k", "0"], "--sophia-k 0: must be at least 1"),
        (&["--sophia-rho", "0.05"], "--sophia-rho is for --optimizer sophia, not"),
        (&["--precision", "fp16"], "--precision fp16: expected auto, fp32 or mixed"),
        (&["--precision", "mixed"], "--precision mixed: this device has no f16 cooperative matrices"),
    ];
    for (extra, want) in cases {
        let (ok, text) = irontensor(&[&train[..], extra].concat(), &[]);
        assert!(!ok && text.contains(want), "{extra:?}: expected {want:?} in\n{text}");
        assert!(!out.join("tokenizer.json").exists(), "{extra:?}: data was prepared before the check:\n{text}");
    }
    let generate = ["generate", "--checkpoint", out_s, "--device", "cpu"];
    let cases: &[(&[&str], &str)] = &[
        (&["--temperature=-1"], "--temperature -1: must be a finite number >= 0"),
        (&["--temperature", "nan"], "--temperature NaN"),
        (&["--top-p", "0"], "--top-p 0: must be in (0, 1]"),
        (&["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        (&["--max-tokens", "0"], "--max-tokens 0: must be at least 1"),
    ];
    for (extra, want) in cases {
        let (ok, text) = irontensor(&[&generate[..], extra].concat(), &[]);
        assert!(!ok && text.contains(want), "{extra:?}: expected {want:?} in\n{text}");
    }
    let bench = ["bench", "train", "--device", "cpu", "--no-split"];
    let cases: &[(&[&str], &str)] = &[
        (&["--steps", "0"], "--steps 0: must be at least 1"),
        (&["--batch", "0"], "--batch 0: must be at least 1"),
        (&["--seq", "0"], "--seq 0: must be between 1 and"),
        (&["--seq", "100000"], "--seq 100000: must be between 1 and"),
        (&["--optimizer", "sgd"], "--optimizer sgd: expected adamw, adamw8bit, lion or sophia"),
    ];
    for (extra, want) in cases {
        let (ok, text) = irontensor(&[&bench[..], extra].concat(), &[]);
        assert!(!ok && text.contains(want), "{extra:?}: expected {want:?} in\n{text}");
    }
    let (ok, text) = irontensor(&["tokenize", "--data", data, "--vocab", "100", "--out", out_s], &[]);
    assert!(!ok && text.contains("--vocab 100: must be at least 257"), "{text}");
    assert!(!out.join("tokenizer.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run directory has one writer: a second `train --out` on it stops at once naming the
/// first; once the first is killed (even by SIGKILL) a third starts.
#[cfg(unix)]
#[test]
fn a_run_directory_has_one_writer() {
    let dir = std::env::temp_dir().join(format!("irontensor-cli-lock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, cfg) = tiny_setup(&dir);
    let out = dir.join("run");
    let args = |steps: &str| {
        let mut a = tiny_train(&data, &cfg, steps);
        a.extend(["--out", out.to_str().unwrap(), "--resume"]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut first = Command::new(env!("CARGO_BIN_EXE_irontensor"))
        .args(args("1000000"))
        .env_remove("IRONTENSOR_DEVICE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while logged_steps(&out).is_empty() {
        if start.elapsed() > Duration::from_secs(120) || first.try_wait().unwrap().is_some() {
            let _ = first.kill();
            panic!("the first run did not log a step in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let second: Vec<String> = args("3");
    let (ok, text) = irontensor(&second.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let waited = t.elapsed();
    let still_running = first.try_wait().unwrap().is_none();
    let steps_before = logged_steps(&out).len();
    first.kill().unwrap(); // SIGKILL: no chance to unlock
    first.wait().unwrap();
    assert!(still_running, "the first run ended early");
    assert!(!ok, "the second run started on a directory in use:\n{text}");
    assert!(text.contains(&format!("pid {}", first.id())) && text.contains("in use"), "{text}");
    assert!(waited < Duration::from_secs(20), "the second run took {waited:?} to stop");
    assert!(logged_steps(&out).len() >= steps_before, "the second run wrote the log");
    let third = args(&(logged_steps(&out).len() + 1).to_string());
    let (ok, text) = irontensor(&third.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(ok, "a run after the holder was killed did not start:\n{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A damaged newest checkpoint does not end a run's history: `--resume` and `generate` say
/// which one is damaged and why, leave it, and use the newest one that loads. The resumed
/// losses are those of a run resumed from that older checkpoint directly.
#[test]
fn resume_and_generate_skip_a_damaged_checkpoint() {
    let dir = std::env::temp_dir().join(format!("irontensor-cli-damaged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (data, cfg) = tiny_setup(&dir);
    let train = |out: &Path, steps: &str, resume: bool| {
        let mut a = tiny_train(&data, &cfg, steps);
        a.extend(["--save-interval", "3", "--out", out.to_str().unwrap()]);
        if resume {
            a.push("--resume");
        }
        irontensor(&a, &[])
    };
    let run = dir.join("run");
    let (ok, text) = train(&run, "6", false);
    assert!(ok, "{text}");
    // The reference: the same run directory without the newer checkpoint, resumed from step 3.
    let reference = dir.join("reference");
    assert!(Command::new("cp").arg("-r").arg(&run).arg(&reference).status().unwrap().success());
    std::fs::remove_dir_all(reference.join("checkpoints/step_00000006")).unwrap();
    // Damage the newest checkpoint: its weights cut in half.
    let damaged = run.join("checkpoints/step_00000006");
    let weights = damaged.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let gen = |from: &Path| {
        let a = ["generate", "--checkpoint", from.to_str().unwrap(), "--prompt", "ROMEO:", "--max-tokens", "10"];
        irontensor(&[&a[..], &["--temperature", "0", "--device", "cpu"]].concat(), &[])
    };
    let (ok, text) = gen(&run);
    assert!(ok, "{text}");
    assert!(text.contains("step_00000006 is damaged") && text.contains("not a valid safetensors"), "{text}");
    let (ok, direct) = gen(&run.join("checkpoints/step_00000003"));
    assert!(ok, "{direct}");
    let direct = without_timings(&direct);
    assert!(text.starts_with(&direct), "generate did not use step 3:\n{text}\nstep 3 gives:\n{direct}");
    let (ok, text) = train(&run, "9", true);
    assert!(ok, "{text}");
    assert!(text.contains("step_00000006 is damaged") && text.contains("not a valid safetensors"), "{text}");
    assert!(text.contains("resuming from") && text.contains("at step 3"), "{text}");
    // The damaged checkpoint is kept, moved aside when the resumed run saved its own step 6.
    assert_eq!(
        std::fs::read(damaged.with_extension("damaged").join("model.safetensors")).unwrap().len(),
        bytes.len() / 2
    );
    assert!(run.join("checkpoints/step_00000009").exists());
    let (ok, text) = train(&reference, "9", true);
    assert!(ok && text.contains("at step 3"), "{text}");
    let losses = |out: &Path| -> Vec<(u64, f64)> {
        let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let steps = lines.iter().filter(|v| v.get("loss").is_some());
        steps.map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())).skip(6).collect()
    };
    let (got, want) = (losses(&run), losses(&reference));
    assert_eq!(got.iter().map(|s| s.0).collect::<Vec<_>>(), (3..9).collect::<Vec<_>>());
    assert_eq!(got, want, "resuming past the damaged checkpoint differs from resuming at step 3");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run that cannot fit the GPU stops before any work, with the arithmetic and what to change.
#[test]
fn a_run_too_large_for_the_gpu_stops_before_it_starts() {
    if common::gpu().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("irontensor-too-large-{}", std::process::id()));
    let (data, cfg) = tiny_setup(&dir);
    let out = dir.join("run");
    let mut args = tiny_train(&data, &cfg, "3");
    args[6] = "gpu"; // --device
    args.extend(["--out", out.to_str().unwrap()]);
    let (ok, text) = irontensor(&args, &[("IRONTENSOR_GPU_MEMORY", "0.0001")]); // 107 KB
    assert!(!ok, "{text}");
    for part in [
        "does not fit the GPU",
        "weights",
        "gradients",
        "optimizer state",
        "activations",
        "--grad-accum 2",
        "IRONTENSOR_BF16=1",
        "--checkpoint-activations",
        "--optimizer adamw8bit",
    ] {
        assert!(text.contains(part), "{part:?} missing: {text}");
    }
    assert!(!out.exists(), "nothing should be written: {text}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `train --init` starts from a model and its tokenizer: a GGUF export and a Hugging Face folder
/// of a trained run. With a learning rate too small to move a weight, the new run writes the
/// same greedy text as the run it started from, and it trained no tokenizer of its own.
#[test]
fn train_init_starts_from_a_gguf_file_or_a_hugging_face_folder() {
    let dir = std::env::temp_dir().join(format!("irontensor-init-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, out) = tiny_run(&dir);
    assert!(ok, "{out}");
    let run = dir.join("run");
    let greedy = ["--prompt", "ROMEO:", "--max-tokens", "15", "--temperature", "0", "--device", "cpu"];
    let generate = |from: &Path| {
        let (ok, out) =
            irontensor(&[&["generate", "--checkpoint", from.to_str().unwrap()][..], &greedy[..]].concat(), &[]);
        assert!(ok, "{out}");
        without_timings(&out)
    };
    let want = generate(&run);
    let gguf = dir.join("model.gguf");
    let (ok, out) = irontensor(
        &["export", "--checkpoint", run.to_str().unwrap(), "--gguf", gguf.to_str().unwrap(), "--type", "f32"],
        &[],
    );
    assert!(ok, "{out}");
    // A folder as downloaded from the Hub: config.json, model.safetensors, tokenizer.json.
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let ckpt = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.path()).max().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(ckpt.join(f), hf.join(f)).unwrap();
    }
    std::fs::copy(run.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    let data = dir.join("slice.txt");
    for (name, init) in [("from-gguf", &gguf), ("from-hf", &hf)] {
        let out_dir = dir.join(name);
        let args = [
            "train",
            "--init",
            init.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--steps",
            "1",
            "--batch",
            "2",
            "--seq",
            "16",
            "--lr",
            "1e-30",
            "--sample-tokens",
            "0",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        let (ok, out) = irontensor(&args, &[]);
        assert!(ok && out.contains("the --init model's") && !out.contains("trained a"), "{name}: {out}");
        assert_eq!(generate(&out_dir), want, "{name}");
    }
    // A run directory made for another model's tokenizer is refused.
    let other = dir.join("other");
    let args = [
        "train",
        "--init",
        gguf.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        other.to_str().unwrap(),
        "--steps",
        "1",
    ];
    std::fs::create_dir_all(&other).unwrap();
    let tok =
        irontensor::data::Tokenizer::train("a small text to train another tokenizer on, twice: a small text", 270)
            .unwrap();
    tok.save(other.join("tokenizer.json")).unwrap();
    let (ok, out) = irontensor(&args, &[]);
    assert!(!ok && out.contains("is not the --init model's tokenizer"), "{out}");
    // What cannot be a model is named.
    let (ok, out) = irontensor(
        &["train", "--init", data.to_str().unwrap(), "--device", "cpu", "--out", dir.join("bad").to_str().unwrap()],
        &[],
    );
    assert!(!ok && out.contains("--init") && out.contains("slice.txt"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `eval`: the loss over the text's windows, against log-softmax of the model's logits in f64.
#[test]
fn eval_reports_the_loss_of_a_model_on_a_text() {
    let dir = std::env::temp_dir().join(format!("irontensor-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ok, out) = tiny_run(&dir);
    assert!(ok, "{out}");
    let run = dir.join("run");
    let text = &std::fs::read_to_string(common::SHAKESPEARE).unwrap()[50_000..52_000];
    let data = dir.join("held-out.txt");
    std::fs::write(&data, text).unwrap();
    let (ok, out) = irontensor(
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--seq",
            "16",
            "--batch",
            "3",
        ],
        &[],
    );
    assert!(ok, "{out}");
    let number = |after: &str| -> f64 {
        out.split(after).nth(1).unwrap().split_whitespace().next().unwrap().trim_end_matches(',').parse().unwrap()
    };
    let (loss, ppl) = (number("loss "), number("perplexity "));
    // The reference: every window's logits from the model, log-softmax in f64.
    let ckpt = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.path()).max().unwrap();
    let model = irontensor::GPTModel::from_pretrained(&ckpt, irontensor::Device::Cpu).unwrap();
    let ids = irontensor::data::Tokenizer::load(run.join("tokenizer.json")).unwrap().encode(text);
    let (seq, v) = (16, model.config.vocab_size);
    let windows = (ids.len() - 1) / seq;
    let mut sum = 0.0;
    for w in 0..windows {
        let x = irontensor::Tensor::from_u32_slice(&ids[w * seq..(w + 1) * seq], &[1, seq]).unwrap();
        let logits = model.forward(&x, 1, seq, 0).unwrap().to_vec();
        for t in 0..seq {
            let row: Vec<f64> = logits[t * v..(t + 1) * v].iter().map(|&l| l as f64).collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            sum += lse - row[ids[w * seq + t + 1] as usize];
        }
    }
    let want = sum / (windows * seq) as f64;
    assert!((loss - want).abs() < 1e-3, "eval said {loss}, the reference {want}: {out}");
    assert!((ppl - want.exp()).abs() < 1e-2 * want.exp(), "{out}");
    assert!(
        out.contains(&format!("{} tokens in windows of 16", windows * seq)) && out.contains("nats/character"),
        "{out}"
    );
    // Too little text is named.
    std::fs::write(&data, "a").unwrap();
    let (ok, out) = irontensor(
        &[
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
            "--seq",
            "16",
        ],
        &[],
    );
    assert!(!ok && out.contains("--data") && out.contains("tokens"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `bench generate` decodes a batch of random prompts, sampled, and says so in its JSON line.
#[test]
fn bench_generate_batch_sampled() {
    let args = ["bench", "generate", "--workload", "seed-tiny", "--device", "cpu", "--prompt-tokens", "4"];
    let more = ["--max-tokens", "3", "--batch", "2", "--temperature", "0.9", "--top-k", "5", "--top-p", "0.8"];
    let (ok, out) = irontensor(&[&args[..], &more[..]].concat(), &[]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line: {out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!((v["batch"].as_u64(), v["generated"].as_u64()), (Some(2), Some(3)), "{line}");
    assert_eq!(v["temperature"].as_f64(), Some(0.9), "{line}");
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{line}");
    let (ok, out) = irontensor(&[&args[..], &["--batch", "0"][..]].concat(), &[]);
    assert!(!ok && out.contains("--batch"), "{out}");
}
