//! The flags of `irontensor train` and `irontensor generate` (and the no-argument run), as clap
//! parses them, and their conversion into the library's option structs.

use clap::{Args, Parser};
use irontensor::cli::{self, GenerateOptions, TrainOptions};
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Text to pretrain on, read as a stream: a .txt or .jsonl ({"text": ...} a line) file, a
    /// directory of them or a quoted glob (default: TinyShakespeare, downloaded into data/); blank
    /// lines separate a text's documents and every 10th document validates. Or one .jsonl file of
    /// fine-tuning records, {"prompt": ..., "completion": ...} or {"messages": [{"role": ...,
    /// "content": ...}, ...]} (rendered with the --init model's chat template), or of any records
    /// with --init; every 10th record validates.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Bytes of text a new tokenizer trains on, drawn evenly across a larger corpus (K, M, G allowed).
    #[arg(long, default_value = "256M", value_parser = cli::parse_bytes)]
    tokenizer_sample_bytes: u64,
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
pub struct DefaultRun {
    #[command(flatten)]
    pub args: TrainArgs,
}

#[derive(Args)]
pub struct GenerateArgs {
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
    /// Continue the prompt this many times at once, one row each, seeded --seed, --seed + 1, ...
    /// (printed one after another once all are done).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// A LoRA adapter folder (PEFT's adapter_config.json + adapter_model.safetensors, or one of
    /// our LoRA checkpoints) to apply to the model without merging it (default: none).
    #[arg(long)]
    adapter: Option<PathBuf>,
}

impl From<TrainArgs> for TrainOptions {
    fn from(a: TrainArgs) -> Self {
        TrainOptions {
            data: a.data,
            tokenizer_sample_bytes: a.tokenizer_sample_bytes,
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
            batch: a.batch,
            adapter: a.adapter,
        }
    }
}
