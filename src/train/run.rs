//! The training loop around `Trainer`: progress bar, JSONL log, periodic evaluation and
//! checkpoints, Ctrl-C that saves and stops cleanly, and the loss picture at the end.

use super::plot::loss_svg;
use super::Trainer;
use crate::device::gpu;
use crate::{bail, CommandBatch, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C ask the loop to save and stop instead of killing the process.
pub fn catch_ctrl_c() {
    // A second install (tests, several runs in one process) keeps the first handler.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // a second Ctrl-C stops at once
        }
    });
}

pub struct RunOptions {
    pub batch: usize,
    pub seq_len: usize,
    /// Where `train_log.jsonl` and `loss.svg` go.
    pub out_dir: PathBuf,
    pub show_progress: bool,
    /// When the process started: the first step then reports how long start-up took (stderr,
    /// and `startup_ms`, `first_step_done_ms`, `pipelines_ms` in its log line).
    pub started: Option<Instant>,
    /// Called with each step's number before it runs (a test hook; None in normal runs).
    pub on_step: Option<StepHook>,
}

/// A per-step callback for `RunOptions::on_step`.
pub type StepHook = Box<dyn Fn(usize)>;

pub struct RunSummary {
    pub steps: usize,
    pub final_train_loss: f32,
    pub final_val_loss: Option<f32>,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub interrupted: bool,
    pub checkpoint: PathBuf,
}

/// Trains until `trainer.config.total_steps`, starting from `trainer.step` (so a resumed
/// trainer carries on). `batch_for(step)` gives the inputs and targets of a step.
pub fn fit(
    trainer: &mut Trainer,
    mut batch_for: impl FnMut(usize) -> Result<(Vec<u32>, Vec<u32>)>,
    val: &[(Vec<u32>, Vec<u32>)],
    opts: &RunOptions,
) -> Result<RunSummary> {
    // Data-parallel: every rank takes its rows of each batch; rank 0 alone evaluates and writes.
    let dist = trainer.dist().cloned();
    let (rank, ranks) = dist.as_ref().map_or((0, 1), |d| (d.rank(), d.size()));
    let root = rank == 0;
    if !opts.batch.is_multiple_of(ranks) {
        bail!(Invalid, "fit: the batch of {} rows cannot be split evenly over {ranks} ranks", opts.batch);
    }
    let local_batch = opts.batch / ranks;
    let rows = rank * local_batch * opts.seq_len..(rank + 1) * local_batch * opts.seq_len;
    let mut log = None;
    let (mut train_curve, mut val_curve) = (Vec::new(), Vec::new());
    let log_path = opts.out_dir.join("train_log.jsonl");
    if root {
        std::fs::create_dir_all(&opts.out_dir)?;
        log = Some(std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?);
        (train_curve, val_curve) = read_curves(&log_path);
    }
    let total = trainer.config.total_steps;
    let bar = if opts.show_progress && root { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_position(trainer.step as u64);
    // Lines past the checkpoint we resume from belong to a run that was cut short.
    train_curve.retain(|&(s, _)| s < trainer.step);
    val_curve.retain(|&(s, _)| s <= trainer.step);
    let start = Instant::now();
    let first = trainer.step;
    let tokens_per_step = (opts.batch * opts.seq_len) as f64;
    let mut last_loss = f32::NAN;
    let mut last_val = None;
    let eval_every = trainer.config.eval_interval.max(1);
    let save_every = trainer.config.save_interval.max(1);
    CommandBatch::begin();
    while trainer.step < total {
        // A Ctrl-C on any rank stops them all at the same step.
        let stop = INTERRUPTED.load(Ordering::SeqCst);
        let stop = match &dist {
            Some(d) => d.any("agreeing whether to stop", stop)?,
            None => stop,
        };
        if stop {
            INTERRUPTED.store(true, Ordering::SeqCst);
            break;
        }
        let step = trainer.step;
        if let Some(hook) = &opts.on_step {
            hook(step);
        }
        let t0 = Instant::now();
        let (x, y) = batch_for(step)?;
        let (x, y) = if ranks > 1 { (x[rows.clone()].to_vec(), y[rows.clone()].to_vec()) } else { (x, y) };
        let lr = trainer.learning_rate();
        let before_first = (step == first).then(pipeline_time);
        let (loss, grad_norm) = trainer.train_step(&x, &y, local_batch, opts.seq_len)?;
        trainer.data_position = trainer.step as u64;
        let dt = t0.elapsed().as_secs_f64();
        let mut record = json!({
            "step": step,
            "loss": json_num(loss),
            "grad_norm": json_num(grad_norm),
            "lr": json_num(lr),
            "step_ms": round2(dt * 1e3),
        });
        if let Some(pipelines_before) = before_first {
            // Pipelines compiled in this step are kept for the next run, even if this one is killed.
            gpu::save_pipeline_cache();
            if let Some(started) = opts.started {
                let line = startup_report(started, t0, pipelines_before, &mut record);
                if root {
                    bar.suspend(|| eprintln!("{line}"));
                }
            }
        }
        last_loss = loss;
        train_curve.push((step, loss));
        let tps = tokens_per_step * (trainer.step - first) as f64 / start.elapsed().as_secs_f64();
        if let Some(log) = &mut log {
            record["tokens_per_s"] = json!((tps * 10.0).round() / 10.0);
            writeln!(log, "{record}")?;
        }
        let done = trainer.step;
        if root && !val.is_empty() && (done.is_multiple_of(eval_every) || done == total) {
            let v = trainer.evaluate(val, opts.batch, opts.seq_len)?;
            last_val = Some(v);
            val_curve.push((done, v));
            if let Some(log) = &mut log {
                writeln!(log, "{}", json!({ "step": done, "val_loss": json_num(v) }))?;
            }
        }
        if done.is_multiple_of(save_every) && done < total {
            save(trainer)?;
        }
        bar.set_position(done as u64);
        let val_msg = last_val.map_or(String::new(), |v| format!(" val {v:.3}"));
        bar.set_message(format!("loss {loss:.3}{val_msg} | {tps:.0} tok/s"));
    }
    CommandBatch::end();
    bar.finish();
    let interrupted = INTERRUPTED.swap(false, Ordering::SeqCst);
    let checkpoint = save(trainer)?;
    if root {
        let svg = loss_svg(&train_curve, &val_curve, "IronTensor training loss");
        std::fs::write(opts.out_dir.join("loss.svg"), svg)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(RunSummary {
        steps: trainer.step,
        final_train_loss: last_loss,
        final_val_loss: last_val,
        seconds,
        tokens_per_second: tokens_per_step * (trainer.step - first) as f64 / seconds.max(1e-9),
        interrupted,
        checkpoint,
    })
}

/// A numbered checkpoint, written by rank 0 alone after the ranks confirm they hold the same
/// weights; every rank gets its path.
fn save(trainer: &Trainer) -> Result<PathBuf> {
    match trainer.dist() {
        None => trainer.save_numbered(),
        Some(d) => {
            d.check_same("the weights", &trainer.weights_fingerprint())?;
            let saved = if d.is_root() { trainer.save_numbered().map(|_| ()) } else { Ok(()) };
            d.agree("writing the checkpoint", saved)?;
            Ok(trainer.numbered_path())
        }
    }
}

/// How long the process took to start the first step and to finish it, and how much of that
/// went to creating GPU pipelines: a line for stderr; the fields go into the first log record.
fn startup_report(started: Instant, began: Instant, pipelines_before: Duration, record: &mut Value) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (began, done) = (ms(began - started), ms(started.elapsed()));
    let mut line = format!("start-up: the first step began {began:.0} ms after process start");
    record["startup_ms"] = json!((began * 10.0).round() / 10.0);
    record["first_step_done_ms"] = json!((done * 10.0).round() / 10.0);
    match gpu::started().map(|c| c.compile_time()) {
        None => line += &format!(", ended after {done:.0} ms"),
        Some((n, pipelines)) => {
            let (before, pipelines) = (ms(pipelines_before), ms(pipelines));
            line += &format!(" ({before:.0} ms of it creating GPU pipelines), ended after {done:.0} ms ");
            line += &format!("({n} pipelines created in {pipelines:.0} ms)");
            record["pipelines_ms"] = json!((pipelines * 10.0).round() / 10.0);
        }
    }
    line
}

/// Time spent creating GPU pipelines so far (zero without a GPU context).
fn pipeline_time() -> Duration {
    gpu::started().map_or(Duration::ZERO, |c| c.compile_time().1)
}

/// A number for JSON, written with the f32's shortest digits (serde_json would widen it to
/// f64 and write all of those); NaN and infinities (a skipped step) become null.
fn json_num(v: f32) -> Value {
    match v.to_string().parse::<f64>() {
        Ok(x) if v.is_finite() => json!(x),
        _ => Value::Null,
    }
}

/// Milliseconds with two decimals, as the log has always written them.
fn round2(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

/// Curves already in a log (a resumed run draws the whole history).
type Curve = Vec<(usize, f32)>;

fn read_curves(path: &Path) -> (Curve, Curve) {
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let Ok(text) = std::fs::read_to_string(path) else { return (train, val) };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        if let Some(l) = v["loss"].as_f64() {
            train.push((step, l as f32));
        } else if let Some(l) = v["val_loss"].as_f64() {
            val.push((step, l as f32));
        }
    }
    (train, val)
}
