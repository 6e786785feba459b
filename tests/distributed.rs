//! Data-parallel training over MPI, through `mpirun` and the `irontensor` binary on the CPU:
//! 2 ranks match 1 rank, a rank that dies or hangs ends the job with an error and leaves a
//! checkpoint that resumes, and a checkpoint resumes under a different number of ranks.
//! Needs `--features distributed` and mpirun (`IRONTENSOR_MPIRUN` names another launcher, e.g.
//! mpirun.mpich); without it the tests skip, unless IRONTENSOR_REQUIRE_MPI=1 makes that a failure.
#![cfg(feature = "distributed")]

use irontensor::train::checkpoint::load_tensors;
use irontensor::{Device, Trainer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest any run here may take before the test calls it a hang.
const DEADLINE: Duration = Duration::from_secs(180);

/// The launcher: `IRONTENSOR_MPIRUN`, else mpirun.
fn launcher() -> String {
    std::env::var("IRONTENSOR_MPIRUN").unwrap_or_else(|_| "mpirun".into())
}

/// `Some(is Open MPI)` when the launcher runs; `None` (the test skips) when it is absent.
fn mpirun() -> Option<bool> {
    static FOUND: OnceLock<Option<bool>> = OnceLock::new();
    *FOUND.get_or_init(|| match Command::new(launcher()).arg("--version").output() {
        Ok(out) => Some(String::from_utf8_lossy(&out.stdout).contains("Open MPI")),
        Err(e) if std::env::var("IRONTENSOR_REQUIRE_MPI").as_deref() == Ok("1") => {
            panic!("IRONTENSOR_REQUIRE_MPI=1 but mpirun cannot run: {e}")
        }
        Err(_) => {
            eprintln!("mpirun not found: MPI test skipped (install openmpi-bin libopenmpi-dev)");
            None
        }
    })
}

/// A test's own directory holding a slice of TinyShakespeare and a tiny model config.
fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("irontensor-dist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tinyshakespeare.txt")).unwrap();
    std::fs::write(dir.join("slice.txt"), &text[..40_000]).unwrap();
    let mut cfg = irontensor::ModelConfig::tiny();
    (cfg.vocab_size, cfg.hidden_dim, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_dim) =
        (320, 32, 2, 4, 2, 64);
    (cfg.max_seq_len, cfg.dropout) = (32, 0.0); // dropout 0: ranks draw their own masks
    std::fs::write(dir.join("model.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    dir
}

/// `irontensor train` of 10 steps of a 4×16 batch into `dir/out`, checkpoints every 5 steps.
fn train_args(dir: &Path, out: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--device", "cpu", "--steps", "10", "--batch", "4", "--seq", "16"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (flag, file) in [("--data", "slice.txt"), ("--config", "model.json"), ("--out", out)] {
        a.push(flag.into());
        a.push(dir.join(file).to_string_lossy().into_owned());
    }
    a.extend(["--save-interval", "5", "--sample-tokens", "0"].iter().map(|s| s.to_string()));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs `program args` with `env`, killed at DEADLINE: (exit success, stdout + stderr, seconds).
fn run(program: &str, args: &[String], env: &[(&str, &str)]) -> (bool, String, f64) {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("IRONTENSOR_DEVICE").env_remove("IRONTENSOR_DIST_CRASH");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd.env("XDG_RUNTIME_DIR", std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into()));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let dir = std::env::temp_dir();
    let tag = format!("irontensor-dist-out-{}-{:?}", std::process::id(), std::thread::current().id());
    let (out_path, err_path) = (dir.join(format!("{tag}.out")), dir.join(format!("{tag}.err")));
    cmd.stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()));
    cmd.stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()));
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!("{program} {args:?} hung: killed after {DEADLINE:?}\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap() + &std::fs::read_to_string(&err_path).unwrap();
    let _ = (std::fs::remove_file(out_path), std::fs::remove_file(err_path));
    (status.success(), text, start.elapsed().as_secs_f64())
}

fn single(args: &[String], env: &[(&str, &str)]) -> (bool, String, f64) {
    run(env!("CARGO_BIN_EXE_irontensor"), args, env)
}

/// `mpirun -n RANKS irontensor args`.
fn ranks(n: usize, args: &[String], env: &[(&str, &str)]) -> (bool, String, f64) {
    let mut a = vec!["-n".to_string(), n.to_string()];
    if mpirun() == Some(true) {
        a.push("--oversubscribe".into());
    }
    a.push(env!("CARGO_BIN_EXE_irontensor").into());
    a.extend(args.iter().cloned());
    run(&launcher(), &a, env)
}

/// Per step, (loss, gradient norm).
type Losses = HashMap<u64, (f64, f64)>;

/// Per step, the last logged (loss, grad_norm) (a resumed run logs its restarted steps again).
fn losses(run_dir: &Path) -> Losses {
    let log = std::fs::read_to_string(run_dir.join("train_log.jsonl")).unwrap();
    let mut out = HashMap::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let (Some(s), Some(l)) = (v["step"].as_u64(), v["loss"].as_f64()) {
            out.insert(s, (l, v["grad_norm"].as_f64().unwrap()));
        }
    }
    out
}

fn checkpoint(run_dir: &Path, step: usize) -> PathBuf {
    run_dir.join(format!("checkpoints/step_{step:08}"))
}

/// Weights of two checkpoints agree to f32 reduction-order noise.
fn assert_same_weights(a: &Path, b: &Path) {
    let (wa, wb) = (
        load_tensors(&a.join("model.safetensors"), Device::Cpu).unwrap(),
        load_tensors(&b.join("model.safetensors"), Device::Cpu).unwrap(),
    );
    assert_eq!(wa.len(), wb.len());
    for (name, ta) in &wa {
        let (x, y) = (ta.to_vec(), wb[name].to_vec());
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs() / (1e-5 + 1e-4 * q.abs())).fold(0.0, f32::max);
        assert!(worst <= 1.0, "{name} differs between {} and {} ({worst}× the tolerance)", a.display(), b.display());
    }
}

/// Steps `from..10` of `got` match the single-process reference.
fn assert_same_losses(got: &Losses, want: &Losses, from: u64) {
    for s in from..10 {
        let ((l, g), (rl, rg)) = (got[&s], want[&s]);
        assert!((l - rl).abs() <= 2e-5 * rl.abs(), "step {s}: loss {l} vs {rl} with one rank");
        assert!((g - rg).abs() <= 1e-4 * rg.abs(), "step {s}: gradient norm {g} vs {rg} with one rank");
    }
}

/// One process with the whole batch of 4: what every distributed run is compared with.
fn reference() -> &'static (PathBuf, Losses) {
    static REF: OnceLock<(PathBuf, Losses)> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = workdir("reference");
        let (ok, out, _) = single(&train_args(&dir, "run", &[]), &[]);
        assert!(ok, "{out}");
        let run = dir.join("run");
        let l = losses(&run);
        assert_eq!(l.len(), 10, "{out}");
        (run, l)
    })
}

#[test]
fn two_ranks_match_one_rank() {
    if mpirun().is_none() {
        return;
    }
    let dir = workdir("equal");
    // Buckets of 4 KiB: many all-reduces, started while backward still runs.
    let (ok, out, _) = ranks(2, &train_args(&dir, "run", &[]), &[("IRONTENSOR_DIST_BUCKET_MB", "0.004")]);
    assert!(ok, "{out}");
    assert!(out.contains("MPI: 2 ranks") && out.contains("2 ranks × 2 rows"), "{out}");
    assert_eq!(out.matches("done: 10 steps").count(), 1, "rank 0 alone reports:\n{out}");
    let (ref_run, ref_losses) = reference();
    let run = dir.join("run");
    assert_same_losses(&losses(&run), ref_losses, 0);
    let val = |r: &Path| std::fs::read_to_string(r.join("train_log.jsonl")).unwrap().matches("val_loss").count();
    assert_eq!(val(&run), val(ref_run), "rank 0 alone evaluates");
    for step in [5, 10] {
        assert_same_weights(&checkpoint(&run, step), &checkpoint(ref_run, step));
    }
    // Each rank's 2 rows as 2 micro-batches of 1: one all-reduce per step still.
    let (ok, out, _) = ranks(2, &train_args(&dir, "accum", &["--grad-accum", "2"]), &[]);
    assert!(ok, "{out}");
    assert_same_losses(&losses(&dir.join("accum")), ref_losses, 0);
    assert_same_weights(&checkpoint(&dir.join("accum"), 10), &checkpoint(ref_run, 10));
    // Checkpointed blocks: their parameters' gradients reach the all-reduce hook all the same.
    let bucket = [("IRONTENSOR_DIST_BUCKET_MB", "0.004")];
    let (ok, out, _) = ranks(2, &train_args(&dir, "ckpt", &["--checkpoint-activations"]), &bucket);
    assert!(ok, "{out}");
    assert_same_losses(&losses(&dir.join("ckpt")), ref_losses, 0);
    assert_same_weights(&checkpoint(&dir.join("ckpt"), 10), &checkpoint(ref_run, 10));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rank_that_dies_ends_the_job_and_one_rank_resumes() {
    if mpirun().is_none() {
        return;
    }
    let dir = workdir("dies");
    let args = train_args(&dir, "run", &[]);
    let (ok, out, secs) = ranks(2, &args, &[("IRONTENSOR_DIST_CRASH", "1:7")]);
    assert!(!ok, "the job must fail when a rank dies:\n{out}");
    assert!(out.contains("rank 1: IRONTENSOR_DIST_CRASH: exiting at step 7"), "{out}");
    if mpirun() == Some(true) {
        assert!(out.contains("rank 0 of 2: stopped by SIGTERM"), "the surviving rank says why it stops:\n{out}");
    }
    assert!(secs < 60.0, "the job took {secs:.0} s to end");
    let run = dir.join("run");
    assert_eq!(Trainer::latest_checkpoint(run.join("checkpoints")).unwrap(), Some(checkpoint(&run, 5)));
    assert_eq!(Trainer::load_checkpoint(checkpoint(&run, 5), Device::Cpu).unwrap().step, 5);
    // The 2-rank checkpoint resumes in a single process, on the reference's course.
    let (ok, out, _) = single(&train_args(&dir, "run", &["--resume"]), &[]);
    assert!(ok && out.contains("resuming from"), "{out}");
    let (ref_run, ref_losses) = reference();
    assert_same_losses(&losses(&run), ref_losses, 0);
    assert_same_weights(&checkpoint(&run, 10), &checkpoint(ref_run, 10));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_single_process_checkpoint_resumes_on_two_ranks() {
    if mpirun().is_none() {
        return;
    }
    let (ref_run, ref_losses) = reference();
    let dir = workdir("grow");
    let run = dir.join("run");
    std::fs::create_dir_all(run.join("checkpoints")).unwrap();
    for f in ["tokenizer.json", "tokens.json", "train-00000.bin", "val-00000.bin"] {
        std::fs::copy(ref_run.join(f), run.join(f)).unwrap();
    }
    let from = checkpoint(ref_run, 5);
    let to = checkpoint(&run, 5);
    std::fs::create_dir_all(&to).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
    let (ok, out, _) = ranks(2, &train_args(&dir, "run", &["--resume"]), &[]);
    assert!(ok && out.contains("resuming from") && out.contains("MPI: 2 ranks"), "{out}");
    assert_same_losses(&losses(&run), ref_losses, 5);
    assert_same_weights(&checkpoint(&run, 10), &checkpoint(ref_run, 10));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rank_that_hangs_ends_the_job_after_the_timeout() {
    if mpirun().is_none() {
        return;
    }
    let dir = workdir("hangs");
    let env = [("IRONTENSOR_DIST_CRASH", "1:3:hang"), ("IRONTENSOR_DIST_TIMEOUT", "5")];
    let (ok, out, secs) = ranks(2, &train_args(&dir, "run", &[]), &env);
    assert!(!ok, "{out}");
    assert!(out.contains("error on rank 0 of 2") && out.contains("did not complete within 5 s"), "{out}");
    assert!(secs < 60.0, "the job took {secs:.0} s to end");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rank_that_cannot_start_ends_the_job() {
    if mpirun() != Some(true) {
        return; // `-x` (one rank's environment) is Open MPI's spelling
    }
    let dir = workdir("nostart");
    let args = train_args(&dir, "run", &[]);
    let bin = env!("CARGO_BIN_EXE_irontensor").to_string();
    let mut a: Vec<String> = ["-n", "1", "--oversubscribe", &bin].iter().map(|s| s.to_string()).collect();
    a.extend(args.iter().cloned());
    a.extend([":", "-n", "1", "-x", "IRONTENSOR_MPI_LIB=/nonexistent/libmpi.so", &bin].iter().map(|s| s.to_string()));
    a.extend(args.iter().cloned());
    let (ok, out, secs) = run(&launcher(), &a, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("MPI could not start on rank 1") && out.contains("/nonexistent/libmpi.so"), "{out}");
    assert!(secs < 60.0, "the job took {secs:.0} s to end");
    std::fs::remove_dir_all(&dir).unwrap();
}
