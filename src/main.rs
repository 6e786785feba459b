//! The `irontensor` command line: flags and dispatch. With no arguments: the TinyShakespeare
//! pipeline (data, BPE tokenizer, training, evaluation, checkpoint, generated text).

use clap::{Parser, Subcommand};
use irontensor::cli::{self, BenchTrainOptions, EvalOptions, Kernel, TrainOptions};
use irontensor::device::gpu;
use irontensor::{Device, Settings};
mod args;

use args::{DefaultRun, GenerateArgs, TrainArgs};
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
    /// The GPU to use, by its index in `irontensor info` (default: IRONTENSOR_GPU; else, under
    /// mpirun on a machine of several GPUs, the rank's local rank; else the best adapter).
    #[arg(long, global = true)]
    gpu: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (tokenizer and datasets are prepared first when missing).
    Train(TrainArgs),
    /// Write text with a trained model.
    Generate(GenerateArgs),
    /// Train the BPE tokenizer and encode the corpus into token shards (tokens.json lists them).
    Tokenize {
        /// A .txt or .jsonl file, a directory of them (searched recursively) or a quoted glob such
        /// as 'corpus/**/*.jsonl' (default: TinyShakespeare, downloaded into data/). Text: blank
        /// lines separate documents; JSONL: one {"text": ...} record a line. Read as a stream.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Tokens in the vocabulary, at least 257.
        #[arg(long, default_value_t = 4096)]
        vocab: usize,
        /// Bytes of text the tokenizer trains on, drawn evenly across a larger corpus (K, M, G allowed).
        #[arg(long, default_value = "256M", value_parser = cli::parse_bytes)]
        tokenizer_sample_bytes: u64,
        /// Run directory to write tokenizer.json, the token shards and tokens.json into.
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
        /// Random prompts decoded together, one row each (tokens/s counts every row).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// 0 = greedy; else sample at this temperature (with --top-k and --top-p).
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// With --temperature: keep the k most likely tokens (0 = all).
        #[arg(long, default_value_t = 0)]
        top_k: usize,
        /// With --temperature: keep the smallest set reaching this probability (1 = all).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
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
        BenchCommand::Generate {
            workload,
            device,
            prompt_tokens,
            max_tokens,
            no_cache,
            precision,
            batch,
            temperature,
            top_k,
            top_p,
        } => {
            let device = irontensor::Device::parse(&device)?;
            let o = irontensor::bench::GenerateBench {
                workload,
                device,
                prompt_tokens,
                max_tokens,
                no_cache,
                batch,
                temperature,
                top_k,
                top_p,
            };
            cli::bench_generate(&o, precision.as_deref(), settings.precision)
        }
        BenchCommand::Matmul { device, shapes } => cli::bench_kernels(Kernel::Matmul, &device, &shapes),
        BenchCommand::Attention { device, shapes, no_causal } => {
            cli::bench_kernels(Kernel::Attention { causal: !no_causal }, &device, &shapes)
        }
        BenchCommand::CrossEntropy { device, shapes } => cli::bench_kernels(Kernel::CrossEntropy, &device, &shapes),
    }
}

/// glibc hands blocks of 128 KiB and more back to the kernel when they are freed and maps them
/// again, page fault by page fault, at the next allocation; the CPU backend makes tensors of
/// megabytes every step. Freed blocks up to 32 MiB (glibc's most) now stay in the heap for reuse.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_blocks() {
    // SAFETY: mallopt only sets allocator parameters; nothing has been allocated in parallel yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn main() {
    let start = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    keep_freed_blocks();
    let cli = Cli::parse();
    // Every variable is read and checked here, before anything runs; the library reads none.
    let chosen = |mut s: Settings| {
        s.gpu.index = cli.gpu.or(s.gpu.index);
        s
    };
    let settings = match Settings::from_env().map(chosen).and_then(|s| irontensor::configure(&s).map(|()| s)) {
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
        (_, Some(Command::Tokenize { data, vocab, tokenizer_sample_bytes, out })) => {
            let o = cli::DataOptions { tokenizer_sample_bytes, ..cli::DataOptions::new(vocab) };
            cli::tokenize(data.as_deref(), &o, &out)
        }
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
