//! The `irontensor` command line. With no arguments: the TinyShakespeare pipeline
//! (data, BPE tokenizer, training, evaluation, checkpoint, generated text).

use clap::{Args, Parser, Subcommand};
use irontensor::data::{tinyshakespeare, LazyTokenizer, TokenDataset, Tokenizer};
use irontensor::device::gpu;
use irontensor::dist::Dist;
use irontensor::infer::{generate, SamplingConfig};
use irontensor::nn::{GPTModel, ModelConfig};
use irontensor::train::{catch_ctrl_c, fit, OptimizerKind, RunOptions, Trainer, TrainingConfig};
use irontensor::{Device, Error, Settings, Tensor};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Set on MPI ranks other than 0, so that the job's output is rank 0's alone.
static QUIET: AtomicBool = AtomicBool::new(false);

/// `eprintln!`, except on MPI ranks other than 0.
macro_rules! note {
    ($($arg:tt)*) => {
        if !QUIET.load(Ordering::Relaxed) {
            eprintln!($($arg)*);
        }
    };
}

#[derive(Parser)]
#[command(
    name = "irontensor",
    version,
    about = "Train small LLMs on your own machine. No arguments: train on TinyShakespeare and write Shakespeare."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (tokenizer and datasets are prepared first when missing).
    Train(TrainArgs),
    /// Write text with a trained model.
    Generate(GenerateArgs),
    /// Train the BPE tokenizer and write train.bin / val.bin.
    Tokenize {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long, default_value_t = 4096)]
        vocab: usize,
        #[arg(long, default_value = "runs/shakespeare")]
        out: PathBuf,
    },
    /// The devices found, the adapter chosen, its backend, features and limits.
    Info,
    /// Benchmarks: training throughput of named workloads, and kernels (one JSON line each).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training throughput of a named workload: seed-tiny or shakespeare (random tokens).
    Train {
        #[arg(long, default_value = "seed-tiny")]
        workload: String,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Timed steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps first (pipelines compile, buffers pool); at least one runs.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        #[arg(long)]
        batch: Option<usize>,
        #[arg(long)]
        seq: Option<usize>,
        /// lion or adamw (default: the workload's).
        #[arg(long)]
        optimizer: Option<String>,
        /// Skip the profiled pass that splits a step into forward, backward and optimizer.
        #[arg(long)]
        no_split: bool,
    },
    /// Matmul GFLOP/s.
    Matmul {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Shapes as MxNxK, comma separated.
        #[arg(long, default_value = "1024x1024x1024,4096x4096x1024")]
        shapes: String,
    },
    /// FlashAttention forward and forward+backward.
    Attention {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Shapes as BxHxTxD (q, k and v alike), comma separated.
        #[arg(long, default_value = "16x6x256x64,16x6x1024x64")]
        shapes: String,
        /// Attend to every key instead of the causal mask.
        #[arg(long)]
        no_causal: bool,
    },
    /// Fused linear cross-entropy forward and forward+backward.
    CrossEntropy {
        #[arg(long, default_value = "auto")]
        device: String,
        /// Shapes as NxCxV (tokens, hidden, vocabulary), comma separated.
        #[arg(long, default_value = "4096x384x4096,4096x384x32000")]
        shapes: String,
    },
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// A UTF-8 text file (default: TinyShakespeare, downloaded into data/).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Model: tiny, small, medium, shakespeare, or a JSON file of ModelConfig fields.
    #[arg(long, default_value = "shakespeare")]
    config: String,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long)]
    seq: Option<usize>,
    #[arg(long)]
    lr: Option<f32>,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long)]
    save_interval: Option<usize>,
    /// Split each batch into N micro-batches whose gradients add up (less memory; under mpirun,
    /// one all-reduce per N micro-batches).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// lion or adamw.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Carry on from the newest checkpoint in OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Run directory: tokenizer, datasets, checkpoints, log, loss picture.
    #[arg(long, default_value = "runs/shakespeare")]
    out: PathBuf,
    /// Tokens of text to write after training (0 = none).
    #[arg(long, default_value_t = 300)]
    sample_tokens: usize,
    /// Seed of the initial weights, the order of the batches and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `irontensor` with no arguments: `train` with its defaults.
#[derive(Parser)]
struct DefaultRun {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Args)]
struct GenerateArgs {
    /// A checkpoint directory, or a run directory (its newest checkpoint is used).
    #[arg(long, default_value = "runs/shakespeare")]
    checkpoint: PathBuf,
    #[arg(long, default_value = "\n")]
    prompt: String,
    #[arg(long, default_value_t = 300)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Recompute the whole context for every token instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
}

type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// What the environment set (`Settings::from_env`), read once at the start of `main`.
static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get().expect("main reads the settings first")
}

fn main() {
    let start = Instant::now();
    let cli = Cli::parse();
    // Every variable is read and checked here, before anything runs; the library reads none.
    let configured = Settings::from_env().and_then(|s| irontensor::configure(&s).map(|()| SETTINGS.get_or_init(|| s)));
    let settings = match configured {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if irontensor::profile::is_enabled() {
        eprintln!("profiling on (IRONTENSOR_PROFILE=1)");
    }
    let result = match (Device::check(settings.device), cli.command) {
        (Err(e), _) => Err(e.into()),
        (_, Some(Command::Info)) => info(start),
        (_, Some(Command::Bench { what })) => bench(what),
        (_, Some(Command::Train(args))) => train(&args, start),
        (_, Some(Command::Generate(args))) => generate_cmd(&args),
        (_, Some(Command::Tokenize { data, vocab, out })) => {
            prepare(data.as_deref(), vocab, &out, 1).and_then(|mut p| Ok(p.0.get().map(|_| ())?))
        }
        (_, None) => train(&DefaultRun::parse_from(["irontensor"]).args, start),
    };
    // Pipelines compiled in this run start the next one sooner.
    gpu::save_pipeline_cache();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The text file to train on: `--data`, or TinyShakespeare (downloaded once into data/).
fn data_file(data: Option<&Path>) -> CliResult<PathBuf> {
    match data {
        Some(p) if p.exists() => Ok(p.to_path_buf()),
        Some(p) => Err(format!("--data {}: no such file", p.display()).into()),
        None => {
            let p = tinyshakespeare("data")?;
            Ok(p)
        }
    }
}

/// Tokenizer and datasets in `out`, made when missing: (tokenizer, train, val, chars per token of val).
fn prepare(
    data: Option<&Path>,
    vocab: usize,
    out: &Path,
    seq_len: usize,
) -> CliResult<(LazyTokenizer, TokenDataset, TokenDataset, f64)> {
    std::fs::create_dir_all(out)?;
    let text_path = data_file(data)?;
    let text = std::fs::read_to_string(&text_path)
        .map_err(|e| format!("{}: {e} (a UTF-8 text file is needed)", text_path.display()))?;
    let split = text.char_indices().nth(text.chars().count() * 9 / 10).map_or(text.len(), |(i, _)| i);
    let (train_text, val_text) = text.split_at(split);
    let tok_path = out.join("tokenizer.json");
    let (train_bin, val_bin) = (out.join("train.bin"), out.join("val.bin"));
    let mut tok = if tok_path.exists() {
        Tokenizer::load_lazily(&tok_path)?
    } else {
        let t = Instant::now();
        let tok = Tokenizer::train(train_text, vocab)?;
        tok.save(&tok_path)?;
        note!(
            "trained a {}-token BPE tokenizer in {:.1}s -> {}",
            tok.vocab_size(),
            t.elapsed().as_secs_f64(),
            tok_path.display()
        );
        let _ = std::fs::remove_file(&train_bin);
        LazyTokenizer::from(tok)
    };
    if !train_bin.exists() || !val_bin.exists() {
        let t = tok.get()?;
        TokenDataset::create(&train_bin, &t.encode(train_text))?;
        TokenDataset::create(&val_bin, &t.encode(val_text))?;
    }
    let train = TokenDataset::open(&train_bin, seq_len)?;
    let val = TokenDataset::open(&val_bin, seq_len)?;
    let chars_per_token = val_text.chars().count() as f64 / val.len() as f64;
    note!(
        "data: {} ({} characters), {} train / {} validation tokens, {chars_per_token:.2} characters per token",
        text_path.display(),
        text.chars().count(),
        train.len(),
        val.len()
    );
    Ok((tok, train, val, chars_per_token))
}

fn model_config(name: &str) -> CliResult<ModelConfig> {
    if name.ends_with(".json") {
        let text = std::fs::read_to_string(name).map_err(|e| format!("--config {name}: {e}"))?;
        let c: ModelConfig = serde_json::from_str(&text).map_err(|e| format!("--config {name}: {e}"))?;
        c.validate()?;
        Ok(c)
    } else {
        Ok(ModelConfig::preset(name)?)
    }
}

/// Defaults for a run: the GPU gets the full model; the CPU a smaller one that finishes in minutes.
fn plan(args: &TrainArgs, device: Device) -> CliResult<(ModelConfig, TrainingConfig, usize, usize)> {
    let mut m = model_config(&args.config)?;
    let mut t = TrainingConfig {
        learning_rate: 1e-3,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        // TinyShakespeare is ~300k tokens: the shakespeare model overfits after ~30 epochs (600
        // steps of 64×256), so the default schedule ends there (tuned on an H200, see issue 5).
        warmup_steps: 60,
        total_steps: 600,
        eval_interval: 100,
        save_interval: 200,
        optimizer: match args.optimizer.as_str() {
            "adamw" => OptimizerKind::AdamW,
            "lion" => OptimizerKind::Lion,
            o => return Err(format!("--optimizer {o}: expected adamw or lion").into()),
        },
        checkpoint_dir: args.out.join("checkpoints").to_string_lossy().into_owned(),
        seed: args.seed,
        use_bf16: settings().bf16,
        ..Default::default()
    };
    if t.optimizer == OptimizerKind::Lion {
        t.learning_rate = 2e-4;
        (t.beta1, t.beta2) = (0.99, 0.9); // the spec's names: interpolate with beta2 = 0.9, track with beta1 = 0.99
    }
    let (mut batch, mut seq) = (64, 256);
    let small_cpu_run = device == Device::Cpu && args.config == "shakespeare";
    if small_cpu_run {
        (m.hidden_dim, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_dim, m.max_seq_len) =
            (192, 4, 6, 6, 512, 128);
        (batch, seq) = (16, 128);
        (t.total_steps, t.warmup_steps, t.eval_interval, t.save_interval) = (500, 50, 100, 250);
        m.dropout = 0.1;
    }
    if let Some(s) = args.steps {
        t.total_steps = s;
        t.warmup_steps = t.warmup_steps.min(s / 10);
        t.eval_interval = t.eval_interval.min(s.max(1));
    }
    batch = args.batch.unwrap_or(batch);
    seq = args.seq.unwrap_or(seq).min(m.max_seq_len);
    if let Some(lr) = args.lr {
        t.learning_rate = lr;
    }
    t.save_interval = args.save_interval.unwrap_or(t.save_interval);
    t.grad_accum_steps = args.grad_accum.unwrap_or(1);
    if small_cpu_run {
        note!(
            "no GPU in use: training a smaller model ({} layers, hidden {}, {} steps of {batch}×{seq} tokens) that finishes in minutes; \
             --device gpu or --config/--steps/--batch/--seq choose otherwise",
            m.num_layers, m.hidden_dim, t.total_steps
        );
    }
    Ok((m, t, batch, seq))
}

fn train(args: &TrainArgs, start: Instant) -> CliResult<()> {
    // Under mpirun: every rank runs this; an error on one ends the whole job.
    let Some(dist) = Dist::start(&settings().dist)? else { return train_on(args, None, start) };
    QUIET.store(!dist.is_root(), Ordering::Relaxed);
    note!("MPI: {} ranks ({})", dist.size(), dist.library);
    match train_on(args, Some(&dist), start) {
        Ok(()) => Ok(dist.finalize()?),
        Err(e) => {
            eprintln!("error on rank {} of {}: {e}", dist.rank(), dist.size());
            dist.abort(1)
        }
    }
}

fn train_on(args: &TrainArgs, dist: Option<&Arc<Dist>>, start: Instant) -> CliResult<()> {
    let device = Device::parse(&args.device)?;
    let (mut model_cfg, train_cfg, batch, seq) = plan(args, device)?;
    let prep = || prepare(args.data.as_deref(), model_cfg.vocab_size, &args.out, seq);
    let (mut tok, train_ds, val_ds, chars_per_token) = match dist {
        None => prep()?,
        Some(d) => {
            // Rank 0 makes the tokenizer and token files; ranks on other machines make theirs,
            // which must come out the same.
            let ready = d.root_first("preparing the data", || prep().map_err(|e| Error::Invalid(e.to_string())))?;
            let tok_json = std::fs::read(args.out.join("tokenizer.json"))?;
            let sizes = format!("{} {} {}", ready.1.len(), ready.2.len(), ready.0.vocab_size());
            d.check_same("the tokenizer and token files", &[tok_json, sizes.into_bytes()].concat())?;
            ready
        }
    };
    model_cfg.vocab_size = tok.vocab_size();
    let make = || -> CliResult<Trainer> {
        Ok(match Trainer::latest_checkpoint(&train_cfg.checkpoint_dir)? {
            Some(ckpt) if args.resume => {
                let mut t = Trainer::load_checkpoint(&ckpt, device)?;
                t.config.total_steps = args.steps.unwrap_or(t.config.total_steps);
                t.scheduler.total = t.config.total_steps;
                // Checkpoints go to this run's directory, even if it was moved or copied.
                t.config.checkpoint_dir = train_cfg.checkpoint_dir.clone();
                t.config.save_interval = args.save_interval.unwrap_or(t.config.save_interval);
                t.config.grad_accum_steps = args.grad_accum.unwrap_or(t.config.grad_accum_steps);
                note!("resuming from {} at step {}", ckpt.display(), t.step);
                t
            }
            Some(ckpt) => {
                return Err(format!(
                    "{} already holds a run ({}); pass --resume to carry on, or --out DIR for a new run",
                    args.out.display(),
                    ckpt.display()
                )
                .into())
            }
            None => Trainer::new_on(model_cfg.clone(), train_cfg.clone(), device)?,
        })
    };
    let mut trainer = match dist {
        None => make()?,
        Some(d) => Trainer::shared(d, || make().map_err(|e| Error::Invalid(e.to_string())), device)?,
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
        device_name(device)
    );
    if let (Device::Gpu, Some(ctx)) = (device, gpu::started()) {
        note!("pipeline cache: {}", ctx.pipeline_cache());
    }
    let seed = trainer.config.seed;
    // A fixed validation set: 20 batches spread over the split.
    let val: Vec<_> = (0..20u64).map(|i| val_ds.batch_at(i, batch, seed ^ 0x5eed)).collect();
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
    let opts = RunOptions { batch, seq_len: seq, out_dir: args.out.clone(), show_progress: true, started: Some(start) };
    let summary = fit(&mut trainer, |step| Ok(train_ds.batch_at(step as u64, batch, seed)), &val, &opts)?;
    if QUIET.load(Ordering::Relaxed) {
        return Ok(()); // rank 0 reports
    }
    if summary.interrupted {
        eprintln!(
            "interrupted: saved {}; `irontensor train --resume --out {}` carries on",
            summary.checkpoint.display(),
            args.out.display()
        );
        return Ok(());
    }
    let v = summary.final_val_loss.unwrap_or(f32::NAN);
    println!(
        "done: {} steps in {:.0}s ({:.0} tokens/s); validation loss {v:.4} nats/token = {:.4} nats/character; checkpoint {}",
        summary.steps,
        summary.seconds,
        summary.tokens_per_second,
        v as f64 / chars_per_token,
        summary.checkpoint.display()
    );
    println!("log {}, loss curves {}", args.out.join("train_log.jsonl").display(), args.out.join("loss.svg").display());
    if irontensor::profile::is_enabled() {
        println!("{}", irontensor::profile::report());
    }
    if args.sample_tokens > 0 {
        println!("\n--- sample ---");
        let cfg = SamplingConfig { max_tokens: args.sample_tokens, ..Default::default() };
        write_text(&trainer.model, tok.get()?, "\n", &cfg, true)?;
    }
    Ok(())
}

fn device_name(device: Device) -> String {
    // gpu::started: a run on the CPU does not start the GPU to name it.
    match (device, gpu::started()) {
        (Device::Gpu, Some(ctx)) => format!("{}, {:?}", ctx.info.name, ctx.info.backend),
        _ => format!("{} threads", rayon::current_num_threads()),
    }
}

/// Streams generated text to stdout.
fn write_text(model: &GPTModel, tok: &Tokenizer, prompt: &str, cfg: &SamplingConfig, cache: bool) -> CliResult<()> {
    let ids = tok.encode(prompt);
    let ids = if ids.is_empty() { vec![tok.eos_id()] } else { ids };
    print!("{prompt}");
    let mut out = std::io::stdout();
    // Decode the growing tail so multi-byte characters split across tokens print whole.
    let mut pending: Vec<u32> = Vec::new();
    generate(model, &ids, cfg, Some(tok.eos_id()), cache, |t| {
        pending.push(t);
        let s = tok.decode(&pending);
        if !s.ends_with('\u{fffd}') {
            print!("{s}");
            let _ = out.flush();
            pending.clear();
        }
    })?;
    println!();
    Ok(())
}

fn generate_cmd(args: &GenerateArgs) -> CliResult<()> {
    let device = Device::parse(&args.device)?;
    let (dir, run_dir) = if args.checkpoint.join("trainer.json").exists()
        || args.checkpoint.join("config.json").exists()
    {
        let run = args.checkpoint.parent().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
        (args.checkpoint.clone(), run)
    } else {
        let ckpt = Trainer::latest_checkpoint(args.checkpoint.join("checkpoints"))?.ok_or_else(|| {
            format!("{}: no checkpoint found (train first, or point --checkpoint at one)", args.checkpoint.display())
        })?;
        (ckpt, args.checkpoint.clone())
    };
    let tok_path = [dir.join("tokenizer.json"), run_dir.join("tokenizer.json")].into_iter().find(|p| p.exists());
    let tok = Tokenizer::load(tok_path.ok_or_else(|| format!("no tokenizer.json beside {}", dir.display()))?)?;
    let model = GPTModel::from_pretrained(&dir, device)?;
    let cfg = SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        max_tokens: args.max_tokens,
    };
    write_text(&model, &tok, &args.prompt, &cfg, !args.no_cache)
}

fn info(start: Instant) -> CliResult {
    println!("irontensor {}", env!("CARGO_PKG_VERSION"));
    println!("cpu: {} threads (rayon)", rayon::current_num_threads());
    println!("default device: {} (IRONTENSOR_DEVICE)", Device::default_device().name());
    match gpu::context() {
        Err(e) => println!("gpu: none ({e})"),
        Ok(ctx) => {
            let i = &ctx.info;
            println!("gpu: {} ({:?}, {:?})", i.name, i.backend, i.device_type);
            println!("  driver: {} {}", i.driver, i.driver_info);
            for other in &ctx.others {
                println!("  also found: {other}");
            }
            println!("  features used: {:?}", ctx.features);
            let l = &ctx.limits;
            println!("  max storage binding: {} MiB", l.max_storage_buffer_binding_size >> 20);
            println!("  max buffer: {} MiB", l.max_buffer_size >> 20);
            println!("  workgroup storage: {} KiB", l.max_compute_workgroup_storage_size >> 10);
            println!("  invocations per workgroup: {}", l.max_compute_invocations_per_workgroup);
            println!("  submit and wait after every op (IRONTENSOR_SYNC_GPU): {}", ctx.sync_every_op());
            println!("  subgroup size: {}..{}", i.subgroup_min_size, i.subgroup_max_size);
            println!("  f16 cooperative-matrix matmul (IRONTENSOR_MATMUL=coop): {}", ctx.coop_matmul);
            println!("  pipeline cache: {}", ctx.pipeline_cache());
            let t = Tensor::from_f32_on(&[1.0, 2.0, 3.0], &[3], Device::Gpu)?;
            let y = irontensor::scale(&t, 2.0)?.to_vec();
            println!("  first GPU result {y:?} after {:.1} ms from process start", start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}

fn bench(what: BenchCommand) -> CliResult {
    use irontensor::bench;
    match what {
        BenchCommand::Train { workload, device, steps, warmup, batch, seq, optimizer, no_split } => {
            let optimizer = match optimizer.as_deref() {
                None => None,
                Some("lion") => Some(OptimizerKind::Lion),
                Some("adamw") => Some(OptimizerKind::AdamW),
                Some(o) => return Err(format!("--optimizer {o}: expected adamw or lion").into()),
            };
            let device = Device::parse(&device)?;
            let opts = bench::TrainBench { workload, device, steps, warmup, batch, seq, optimizer, split: !no_split };
            bench::train(&opts)?;
        }
        BenchCommand::Matmul { device, shapes } => bench::matmul(Device::parse(&device)?, &shapes)?,
        BenchCommand::Attention { device, shapes, no_causal } => {
            bench::attention(Device::parse(&device)?, &shapes, !no_causal)?
        }
        BenchCommand::CrossEntropy { device, shapes } => bench::cross_entropy(Device::parse(&device)?, &shapes)?,
    }
    Ok(())
}
