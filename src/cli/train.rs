//! `irontensor train`: plan, lock the run directory, prepare the data, make or resume the
//! trainer (on every MPI rank under mpirun), train, report, and write a sample.

use super::{bad_flag, generate::write_text, load_model, plan_from, prepare_data, quiet, DataOptions, Plan, Prepared};
use super::{is_finetune_jsonl, RunLock};
use super::{prepare_jsonl, PreparedJsonl, TrainOptions, QUIET};
use crate::data::{MaskedDataset, TokenDataset};
use crate::device::gpu;
use crate::dist::Dist;
use crate::infer::SamplingConfig;
use crate::settings::DistSettings;
use crate::train::{catch_ctrl_c, fit, gb, MemoryPlan, OptimizerKind, RunOptions, Trainer};
use crate::{Device, Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// Runs `irontensor train` with `o`, joining the MPI job `dist` describes when there is one;
/// `start` is when the process started.
pub fn train(o: &TrainOptions, dist: &DistSettings, start: Instant) -> Result<()> {
    // Under mpirun: every rank runs this; an error on one ends the whole job.
    let Some(dist) = Dist::start(dist)? else { return train_on(o, None, start) };
    QUIET.store(!dist.is_root(), Ordering::Relaxed);
    note!("MPI: {} ranks ({})", dist.size(), dist.library);
    match train_on(o, Some(&dist), start) {
        Ok(()) => dist.finalize(),
        Err(e) => {
            eprintln!("error on rank {} of {}: {e}", dist.rank(), dist.size());
            dist.abort(1)
        }
    }
}

/// Prints what the run will hold in GPU memory against what the GPU has, and stops, before any
/// work, with that arithmetic and what to change when it cannot fit.
fn check_memory(plan: &Plan) -> Result<()> {
    let Plan { model, train, batch, seq, .. } = plan;
    let need = MemoryPlan::new(model, train, *batch, *seq);
    let micro = batch / train.grad_accum_steps.max(1);
    let Some(have) = gpu::started().and_then(|c| c.memory_bytes()) else {
        note!("memory: {} at {micro}×{seq} tokens a micro-batch (the GPU's own memory is not known)", need.describe());
        return Ok(());
    };
    // Room for the pool's size classes, the driver and other programs.
    let usable = have / 100 * 90;
    if need.total() <= usable {
        note!("memory: {} at {micro}×{seq} tokens a micro-batch, of the GPU's {}", need.describe(), gb(have));
        return Ok(());
    }
    let mut fixes = Vec::new();
    if micro > 1 {
        let half = (micro / 2) * train.grad_accum_steps;
        fixes.push(format!(
            "--grad-accum {} (the same batch in micro-batches of {}: activations {})",
            train.grad_accum_steps * 2,
            micro / 2,
            gb(need.activations / 2)
        ));
        fixes.push(format!("--batch {half} (activations {})", gb(need.activations / 2)));
    }
    if *seq > 1 {
        fixes.push(format!("--seq {} (activations about {})", seq / 2, gb(need.activations / 2)));
    }
    if !train.checkpoint_activations {
        let train = crate::train::TrainingConfig { checkpoint_activations: true, ..train.clone() };
        let less = MemoryPlan::new(model, &train, *batch, *seq).activations;
        fixes.push(format!(
            "--checkpoint-activations (each block recomputed in the backward pass: activations {})",
            gb(less)
        ));
    }
    if !train.use_bf16 {
        fixes.push(format!("IRONTENSOR_BF16=1 (BF16 weights: {})", gb(need.weights / 2)));
    }
    if train.optimizer == OptimizerKind::AdamW {
        let small = OptimizerKind::AdamW8bit.state_bytes(model.num_params() as u64);
        fixes.push(format!("--optimizer adamw8bit (AdamW with 8-bit moments: {})", gb(small)));
    }
    if train.optimizer.state_bytes(1) == 8 {
        fixes.push(format!("--optimizer lion (one state word per weight, not two: {})", gb(need.optimizer / 2)));
    }
    fixes.push("a smaller --config".into());
    Err(Error::Invalid(format!(
        "this run does not fit the GPU: {} at {micro}×{seq} tokens a micro-batch, and the GPU has {} ({} of it usable); \
         change one of: {}",
        need.describe(),
        gb(have),
        gb(usable),
        fixes.join(", ")
    )))
}

fn train_on(o: &TrainOptions, dist: Option<&Arc<Dist>>, start: Instant) -> Result<()> {
    let device = Device::parse(&o.device)?;
    // --init: the model and its tokenizer, read on the CPU first (its config plans the run).
    let init = match &o.init {
        Some(p) => {
            Some(load_model(p, Device::Cpu).map_err(|e| Error::Invalid(format!("--init {}: {e}", p.display())))?)
        }
        None => None,
    };
    if let (Some(p), Some((m, _))) = (&o.init, &init) {
        note!("starting from {} ({:.1}M parameters)", p.display(), m.config.num_params() as f64 / 1e6);
    }
    let plan = plan_from(o, device, init.as_ref().map(|(m, _)| &m.config))?;
    let Plan { model: mut model_cfg, train: train_cfg, batch, seq, .. } = plan.clone();
    if let Some(d) = dist {
        let ranks = d.size();
        if !batch.is_multiple_of(ranks * train_cfg.grad_accum_steps) {
            let why = format!(
                "must be divisible by the {ranks} MPI ranks × --grad-accum {} = {}",
                train_cfg.grad_accum_steps,
                ranks * train_cfg.grad_accum_steps
            );
            return Err(bad_flag("batch", batch, &why));
        }
    }
    super::choose_precision(o.precision.as_deref(), o.precision_env, device)?;
    if device == Device::Gpu {
        check_memory(&plan)?;
    }
    if plan.small_cpu_run {
        note!(
            "no GPU in use: training a smaller model ({} layers, hidden {}, {} steps of {batch}×{seq} tokens) that finishes in minutes; \
             --device gpu or --config/--steps/--batch/--seq choose otherwise",
            model_cfg.num_layers, model_cfg.hidden_dim, train_cfg.total_steps
        );
    }
    // One writer per run directory. Under mpirun rank 0 takes the lock before any rank writes
    // (the others prepare their data after it, in `root_first`) and holds it to the end.
    let take_lock = || RunLock::take(&o.out);
    let init_tok = init.as_ref().map(|(_, t)| t);
    // One .jsonl file of fine-tuning records, or any with --init, is fine-tuning data; the rest streams.
    let jsonl = o.data.as_deref().filter(|d| d.is_file() && d.extension().is_some_and(|e| e == "jsonl"));
    let jsonl = jsonl.filter(|d| o.init.is_some() || is_finetune_jsonl(d));
    let prep = || -> Result<RunData> {
        let Some(data) = jsonl else {
            let d = DataOptions {
                tokenizer_sample_bytes: o.tokenizer_sample_bytes,
                ..DataOptions::new(model_cfg.vocab_size)
            };
            return Ok(RunData::Text(prepare_data(o.data.as_deref(), &d, &o.out, seq, init_tok)?));
        };
        let given = init_tok.zip(o.init.as_deref());
        let p = prepare_jsonl(data, &o.out, seq, model_cfg.vocab_size, given, o.finetune)?;
        Ok(RunData::Jsonl(p))
    };
    let (_lock, data) = match dist {
        None => (Some(take_lock()?), prep()?),
        Some(d) => {
            // Rank 0 makes the tokenizer and token files; ranks on other machines make theirs,
            // which must come out the same.
            let (lock, ready) = d.root_first("preparing the data", || {
                let lock = if d.is_root() { Some(take_lock()?) } else { None };
                Ok((lock, prep()?))
            })?;
            let tok_json = std::fs::read(o.out.join("tokenizer.json"))?;
            let sizes = ready.sizes();
            d.check_same("the tokenizer and token files", &[tok_json, sizes].concat())?;
            (lock, ready)
        }
    };
    let (mut tok, train_ds, val_ds, chars_per_token) = match data {
        RunData::Text(Prepared { tokenizer, train, val, chars_per_token }) => {
            (tokenizer, Split::Text(train), Split::Text(val), Some(chars_per_token))
        }
        RunData::Jsonl(PreparedJsonl { tokenizer, train, val }) => {
            (tokenizer.into(), Split::Masked(train), Split::Masked(val), None)
        }
    };
    if init.is_none() {
        model_cfg.vocab_size = tok.vocab_size();
    }
    let init_model = init.map(|(m, _)| m);
    let fresh = || -> Result<Trainer> {
        let Some(mut model) = init_model else { return Trainer::new_on(model_cfg.clone(), train_cfg.clone(), device) };
        if train_cfg.use_bf16 {
            model.to_bf16()?;
        }
        model.to_device(device)?;
        Trainer::with_model(model, train_cfg.clone())
    };
    let make = || -> Result<Trainer> {
        if !o.resume {
            if let Some(ckpt) = Trainer::latest_checkpoint(&train_cfg.checkpoint_dir)? {
                return Err(Error::Invalid(format!(
                    "{} already holds a run ({}); pass --resume to carry on, or --out DIR for a new run",
                    o.out.display(),
                    ckpt.display()
                )));
            }
            return fresh();
        }
        let Some((ckpt, mut t)) = Trainer::load_latest(&train_cfg.checkpoint_dir, device)? else {
            return fresh();
        };
        t.config.total_steps = o.steps.unwrap_or(t.config.total_steps);
        t.scheduler.total = t.config.total_steps;
        // Checkpoints go to this run's directory, even if it was moved or copied.
        t.config.checkpoint_dir = train_cfg.checkpoint_dir.clone();
        t.config.save_interval = o.save_interval.unwrap_or(t.config.save_interval);
        t.config.grad_accum_steps = o.grad_accum.unwrap_or(t.config.grad_accum_steps);
        // The flag changes memory, not numbers: this run's flag holds, whatever the saved run used.
        t.config.checkpoint_activations = o.checkpoint_activations;
        t.model.checkpoint_activations = o.checkpoint_activations;
        note!("resuming from {} at step {}", ckpt.display(), t.step);
        Ok(t)
    };
    let mut trainer = match dist {
        None => make()?,
        Some(d) => Trainer::shared(d, make, device)?,
    };
    let c = &trainer.model.config;
    note!(
        "model: {:.1}M parameters ({} layers, hidden {}, {} heads, vocab {}) on {} ({})",
        c.num_params() as f64 / 1e6,
        c.num_layers,
        c.hidden_dim,
        c.num_heads,
        c.vocab_size,
        device.name(),
        super::device_name(device)
    );
    if let (Device::Gpu, Some(ctx)) = (device, gpu::started()) {
        note!("pipeline cache: {}", ctx.pipeline_cache());
    }
    let seed = trainer.config.seed;
    // A fixed validation set: 20 batches spread over the split (JSONL: its windows in order, at most 20 batches).
    let val: Vec<_> = match &val_ds {
        Split::Text(v) => (0..20u64).map(|i| v.batch_at(i, batch, seed ^ 0x5eed)).collect(),
        Split::Masked(v) => v.in_order(batch, 20),
    };
    if let (Some(d), Some((buckets, values))) = (dist, trainer.all_reduce_plan()) {
        note!(
            "data parallel: {} ranks × {} rows; {:.1} MB of gradients all-reduced per step in {buckets} buckets",
            d.size(),
            batch / d.size().max(1),
            values as f64 * 4.0 / 1e6
        );
    }
    tok.get()?; // loaded while the model initialised; a bad tokenizer.json stops the run here
    catch_ctrl_c();
    let on_step = dist.and_then(|d| d.failure_test());
    let opts =
        RunOptions { batch, seq_len: seq, out_dir: o.out.clone(), show_progress: true, started: Some(start), on_step };
    let summary = fit(&mut trainer, |step| Ok(train_ds.batch_at(step as u64, batch, seed)), &val, &opts)?;
    if quiet() {
        return Ok(()); // rank 0 reports
    }
    if summary.interrupted {
        eprintln!(
            "interrupted: saved {}; `irontensor train --resume --out {}` carries on",
            summary.checkpoint.display(),
            o.out.display()
        );
        return Ok(());
    }
    let v = summary.final_val_loss.unwrap_or(f32::NAN);
    let per_char = match chars_per_token {
        Some(c) => format!(" = {:.4} nats/character", v as f64 / c),
        None => " (over the counted tokens)".into(),
    };
    println!(
        "done: {} steps in {:.0}s ({:.0} tokens/s); validation loss {v:.4} nats/token{per_char}; checkpoint {}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_second,
        summary.checkpoint.display()
    );
    println!("log {}, loss curves {}", o.out.join("train_log.jsonl").display(), o.out.join("loss.svg").display());
    if crate::profile::is_enabled() {
        println!("{}", crate::profile::report());
    }
    if o.sample_tokens > 0 {
        println!("\n--- sample ---");
        let cfg = SamplingConfig { max_tokens: o.sample_tokens, ..Default::default() };
        write_text(&trainer.model, tok.get()?, "\n", &cfg, true)?;
    }
    Ok(())
}

/// What `prepare` made for the run: token files of text, or packed fine-tuning windows.
enum RunData {
    Text(Prepared),
    Jsonl(PreparedJsonl),
}

impl RunData {
    /// What every MPI rank must have made the same: the split sizes and the vocabulary.
    fn sizes(&self) -> Vec<u8> {
        match self {
            RunData::Text(p) => format!("{} {} {}", p.train.len(), p.val.len(), p.tokenizer.vocab_size()),
            RunData::Jsonl(p) => {
                format!("{} {} {}", p.train.num_windows(), p.val.num_windows(), p.tokenizer.vocab_size())
            }
        }
        .into_bytes()
    }
}

/// One split's batches.
enum Split {
    Text(TokenDataset),
    Masked(MaskedDataset),
}

impl Split {
    fn batch_at(&self, step: u64, batch: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        match self {
            Split::Text(d) => d.batch_at(step, batch, seed),
            Split::Masked(d) => d.batch_at(step, batch, seed),
        }
    }
}
