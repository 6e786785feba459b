//! The `irontensor` command line: flags and dispatch. With no arguments: the TinyShakespeare
//! pipeline (data, BPE tokenizer, training, evaluation, checkpoint, generated text).

use clap::{Args, Parser, Subcommand};
use irontensor::cli::{self, BenchTrainOptions, EvalOptions, GenerateOptions, Kernel, TrainOptions};
use irontensor::device::gpu;
use irontensor::{Device, Settings};
use std::path::PathBuf;
use std::time::Instant;

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
        /// A UTF-8 text file (default: TinyShakespeare, downloaded into data/).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Tokens in the vocabulary, at least 257.
        #[arg(long, default_value_t = 4096)]
        vocab: usize,
        /// Run directory to write tokenizer.json, train.bin and val.bin into.
        #[arg(long, default_value = "runs/shakespeare")]
        out: PathBuf,
    },
    /// Write a checkpoint as a GGUF file that llama.cpp, Ollama and LM Studio run.
    Export {
        /// A checkpoint directory, or a run directory (its newest checkpoint that loads).
        #[arg(long, default_value = "runs/shakespeare")]
        checkpoint: PathBuf,
        /// The GGUF file to write (this or --out; default: none).
        #[arg(long)]
        gguf: Option<PathBuf>,
        /// Tensor type of --gguf: f32, f16 or q8_0 (norms stay f32).
        #[arg(long = "type", default_value = "f16")]
        ty: String,
        /// A folder to write as a Hugging Face model (config.json, model.safetensors, tokenizer
        /// files) that transformers loads (this or --gguf; default: none).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fold the checkpoint's LoRA adapters into its weights (needed to export a LoRA run).
        #[arg(long)]
        merge: bool,
    },
    /// Loss and perplexity of a model on a text or JSONL file.
    Eval {
        /// A checkpoint directory, a run directory (its newest checkpoint that loads), a GGUF
        /// file or a Hugging Face Llama folder.
        #[arg(long, default_value = "runs/shakespeare")]
        checkpoint: PathBuf,
        /// A UTF-8 text file, or .jsonl records as `train --data` takes them (the loss is then over
        /// completion and assistant tokens). Required: no default.
        #[arg(long)]
        data: PathBuf,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Tokens per window, 1 to the model's max_seq_len (default: max_seq_len, at most 1024).
        #[arg(long)]
        seq: Option<usize>,
        /// Windows per forward pass, at least 1.
        #[arg(long, default_value_t = 8)]
        batch: usize,
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
    /// Training throughput of a named workload: seed-tiny, shakespeare, gpt2-small, llama-1b, llama-3.2-1b or llama-8b (random tokens).
    Train {
        /// seed-tiny or shakespeare.
        #[arg(long, default_value = "seed-tiny")]
        workload: String,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Timed steps, at least 1.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Untimed steps first (pipelines compile, buffers pool); at least one runs.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Rows per step, at least 1 (default: the workload's).
        #[arg(long)]
        batch: Option<usize>,
        /// Tokens per row, 1 to the model's max_seq_len (default: the workload's).
        #[arg(long)]
        seq: Option<usize>,
        /// adamw, adamw8bit, lion or sophia (default: the workload's).
        #[arg(long)]
        optimizer: Option<String>,
        /// Train LoRA adapters of this rank on q, k, v and o (alpha 2 × rank), the weights frozen
        /// (default: train every weight).
        #[arg(long)]
        lora: Option<usize>,
        /// Skip the profiled pass that splits a step into forward, backward and optimizer.
        #[arg(long)]
        no_split: bool,
        /// Keep only each transformer block's input and recompute the block in the backward pass.
        #[arg(long)]
        checkpoint_activations: bool,
        /// auto, fp32 or mixed (default: auto, or what IRONTENSOR_MATMUL says; auto is mixed where
        /// the GPU has f16 cooperative matrices, fp32 elsewhere).
        #[arg(long)]
        precision: Option<String>,
    },
    /// Generation speed of a named workload's model (random weights, greedy): prefill time and
    /// decode tokens/s.
    Generate {
        /// seed-tiny, shakespeare, gpt2-small, llama-1b, llama-3.2-1b or llama-8b.
        #[arg(long, default_value = "shakespeare")]
        workload: String,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Prompt length in tokens, at least 1.
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        /// Tokens to generate, at least 1 (prompt + these within the model's context).
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Recompute the whole context for every token instead of using the KV cache.
        #[arg(long)]
        no_cache: bool,
        /// auto, fp32 or mixed (default: auto, or what IRONTENSOR_MATMUL says).
        #[arg(long)]
        precision: Option<String>,
    },
    /// Matmul GFLOP/s.
    Matmul {
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Shapes as MxNxK, comma separated.
        #[arg(long, default_value = "1024x1024x1024,4096x4096x1024")]
        shapes: String,
    },
    /// FlashAttention forward and forward+backward.
    Attention {
        /// cpu, gpu or auto.
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
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Shapes as NxCxV (tokens, hidden, vocabulary), comma separated.
        #[arg(long, default_value = "4096x384x4096,4096x384x32000")]
        shapes: String,
    },
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// A UTF-8 text file (default: TinyShakespeare, downloaded into data/), or a .jsonl file of
    /// records, one a line: {"text": ...}, {"prompt": ..., "completion": ...} or {"messages":
    /// [{"role": ..., "content": ...}, ...]} (rendered with the --init model's chat template);
    /// every 10th record validates.
    #[arg(long)]
    data: Option<PathBuf>,
    /// JSONL data: count every token in the loss, not only completions and assistant turns.
    #[arg(long)]
    train_on_prompt: bool,
    /// JSONL data: one record a window, padded, instead of packing whole records together.
    #[arg(long)]
    no_pack: bool,
    /// Model: tiny, small, medium, shakespeare, or a JSON file of ModelConfig fields.
    #[arg(long, default_value = "shakespeare")]
    config: String,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Optimizer steps, at least 1 (default: 600; 500 for the smaller CPU model).
    #[arg(long)]
    steps: Option<usize>,
    /// Rows per step, at least 1, divisible by --grad-accum and the MPI ranks (default: 64; 16 on the CPU).
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per row, 1 to the model's max_seq_len (default: 256, or max_seq_len if smaller; 128 on the CPU).
    #[arg(long)]
    seq: Option<usize>,
    /// Peak learning rate, finite and > 0 (default: 1e-3 for adamw, 2e-4 for lion, 6e-4 for sophia).
    #[arg(long)]
    lr: Option<f32>,
    /// Write a checkpoint every N steps (and at the end), at least 1 (default: 200; 250 on the CPU).
    #[arg(long)]
    save_interval: Option<usize>,
    /// Split each batch into N micro-batches whose gradients add up (less memory; under mpirun,
    /// one all-reduce per N micro-batches); at least 1 (default: 1).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// adamw, adamw8bit (AdamW's moments in 8 bits: ~2 bytes of state a weight, not 8), lion or
    /// sophia (Sophia-G: a clipped step scaled by a Hessian estimate).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// Sophia's γ, finite and > 0: the step is clip(m / max(γ·h, 1e-15), 1) (default: 0.01).
    #[arg(long)]
    sophia_rho: Option<f32>,
    /// Sophia: steps between Hessian estimates, at least 1; each costs about one more step (default: 10).
    #[arg(long)]
    sophia_k: Option<usize>,
    /// Carry on from the newest checkpoint in OUT/checkpoints that loads.
    #[arg(long)]
    resume: bool,
    /// Run directory: tokenizer, datasets, checkpoints, log, loss picture (one writer at a time).
    #[arg(long, default_value = "runs/shakespeare")]
    out: PathBuf,
    /// Tokens of text to write after training (0 = none).
    #[arg(long, default_value_t = 300)]
    sample_tokens: usize,
    /// Seed of the initial weights, the order of the batches and the dropout masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, fp32 or mixed (default: auto, or what IRONTENSOR_MATMUL says; auto is mixed where the
    /// GPU has f16 cooperative matrices, fp32 elsewhere).
    #[arg(long)]
    precision: Option<String>,
    /// Start from this model and its tokenizer instead of a new one (default: none): a GGUF file
    /// (llama), a Hugging Face Llama or Qwen2 folder (config.json, model.safetensors or its shards,
    /// tokenizer.json), or an IronTensor checkpoint or run directory. --config is then ignored,
    /// and --lr defaults to 5e-5.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Train LoRA adapters of this rank (at least 1) on the --init model, whose weights stay
    /// frozen; checkpoints hold the adapters in PEFT's format (default: train every weight).
    #[arg(long)]
    lora: Option<usize>,
    /// LoRA's alpha: the update is scaled by alpha / rank (default: 2 × rank).
    #[arg(long)]
    lora_alpha: Option<f32>,
    /// Dropout on the adapters' input while training, in [0, 1) (default: 0).
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// The projections that get adapters, comma separated, of q, k, v, o, gate, up, down (default: q,v).
    #[arg(long)]
    lora_targets: Option<String>,
    /// Keep only each transformer block's input in the forward pass and recompute the block in
    /// the backward pass: less activation memory for about one more forward per step.
    #[arg(long)]
    checkpoint_activations: bool,
}

/// `irontensor` with no arguments: `train` with its defaults.
#[derive(Parser)]
struct DefaultRun {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Args)]
struct GenerateArgs {
    /// A checkpoint directory, or a run directory (its newest checkpoint that loads).
    #[arg(long, default_value = "runs/shakespeare")]
    checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// A user message, rendered with the model's chat template; prints only the reply, which
    /// stops at the model's end-of-turn token (default: none, --prompt's plain text).
    #[arg(long, conflicts_with = "prompt")]
    chat: Option<String>,
    /// Tokens to write, at least 1.
    #[arg(long, default_value_t = 300)]
    max_tokens: usize,
    /// Sampling temperature, finite and >= 0 (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample from the K most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches P, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, gpu or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Recompute the whole context for every token instead of using the KV cache.
    #[arg(long)]
    no_cache: bool,
    /// Past the model's context (max_seq_len), slide the window over the newest tokens instead
    /// of stopping (default: stop, saying so).
    #[arg(long)]
    slide: bool,
    /// A LoRA adapter folder (PEFT's adapter_config.json + adapter_model.safetensors, or one of
    /// our LoRA checkpoints) to apply to the model without merging it (default: none).
    #[arg(long)]
    adapter: Option<PathBuf>,
}

impl From<TrainArgs> for TrainOptions {
    fn from(a: TrainArgs) -> Self {
        TrainOptions {
            data: a.data,
            config: a.config,
            device: a.device,
            steps: a.steps,
            batch: a.batch,
            seq: a.seq,
            lr: a.lr,
            save_interval: a.save_interval,
            grad_accum: a.grad_accum,
            optimizer: a.optimizer,
            sophia_rho: a.sophia_rho,
            sophia_k: a.sophia_k,
            resume: a.resume,
            out: a.out,
            sample_tokens: a.sample_tokens,
            seed: a.seed,
            bf16: false,
            precision: a.precision,
            precision_env: Default::default(),
            init: a.init,
            lora: a.lora,
            lora_alpha: a.lora_alpha,
            lora_dropout: a.lora_dropout,
            lora_targets: a.lora_targets,
            checkpoint_activations: a.checkpoint_activations,
            finetune: cli::FinetuneOptions { train_on_prompt: a.train_on_prompt, no_pack: a.no_pack },
        }
    }
}

impl From<GenerateArgs> for GenerateOptions {
    fn from(a: GenerateArgs) -> Self {
        GenerateOptions {
            checkpoint: a.checkpoint,
            prompt: a.prompt,
            chat: a.chat,
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            device: a.device,
            no_cache: a.no_cache,
            slide: a.slide,
            adapter: a.adapter,
        }
    }
}

fn bench(what: BenchCommand, settings: &Settings) -> irontensor::Result<()> {
    match what {
        BenchCommand::Train {
            workload,
            device,
            steps,
            warmup,
            batch,
            seq,
            optimizer,
            no_split,
            precision,
            checkpoint_activations,
            lora,
        } => {
            let (bf16, precision_env) = (settings.bf16, settings.precision);
            let o = BenchTrainOptions {
                workload,
                device,
                steps,
                warmup,
                batch,
                seq,
                optimizer,
                no_split,
                checkpoint_activations,
                bf16,
                precision,
                precision_env,
                lora,
            };
            cli::bench_train(&o)
        }
        BenchCommand::Generate { workload, device, prompt_tokens, max_tokens, no_cache, precision } => {
            let device = irontensor::Device::parse(&device)?;
            let o = irontensor::bench::GenerateBench { workload, device, prompt_tokens, max_tokens, no_cache };
            cli::bench_generate(&o, precision.as_deref(), settings.precision)
        }
        BenchCommand::Matmul { device, shapes } => cli::bench_kernels(Kernel::Matmul, &device, &shapes),
        BenchCommand::Attention { device, shapes, no_causal } => {
            cli::bench_kernels(Kernel::Attention { causal: !no_causal }, &device, &shapes)
        }
        BenchCommand::CrossEntropy { device, shapes } => cli::bench_kernels(Kernel::CrossEntropy, &device, &shapes),
    }
}

fn main() {
    let start = Instant::now();
    let cli = Cli::parse();
    // Every variable is read and checked here, before anything runs; the library reads none.
    let settings = match Settings::from_env().and_then(|s| irontensor::configure(&s).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    if irontensor::profile::is_enabled() {
        eprintln!("profiling on (IRONTENSOR_PROFILE=1)");
    }
    let train = |args: TrainArgs| {
        let options = TrainOptions { bf16: settings.bf16, precision_env: settings.precision, ..args.into() };
        cli::train(&options, &settings.dist, start)
    };
    let result = match (Device::check(settings.device), cli.command) {
        (Err(e), _) => Err(e),
        (_, Some(Command::Info)) => cli::info(start),
        (_, Some(Command::Bench { what })) => bench(what, &settings),
        (_, Some(Command::Train(args))) => train(args),
        (_, Some(Command::Generate(args))) => cli::generate(&args.into()),
        (_, Some(Command::Tokenize { data, vocab, out })) => cli::tokenize(data.as_deref(), vocab, &out),
        (_, Some(Command::Export { checkpoint, gguf, ty, out, merge })) => {
            cli::export(&checkpoint, gguf.as_deref(), out.as_deref(), &ty, merge)
        }
        (_, Some(Command::Eval { checkpoint, data, device, seq, batch })) => {
            cli::eval(&EvalOptions { checkpoint, data, device, seq, batch })
        }
        (_, None) => train(DefaultRun::parse_from(["irontensor"]).args),
    };
    // Pipelines compiled in this run start the next one sooner.
    gpu::save_pipeline_cache();
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
