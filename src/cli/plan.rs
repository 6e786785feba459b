//! Run planning: the model and training configuration of `irontensor train` from its flags,
//! with presets, the smaller CPU model, defaults and overrides. Every flag is checked here,
//! before any data is prepared or model made.

use super::{at_least_one, bad_flag};
use crate::nn::{LoraConfig, ModelConfig};
use crate::train::{OptimizerKind, TrainingConfig};
use crate::{Device, Error, Result};
use std::path::PathBuf;

/// The flags of `irontensor train` (None: the plan's default).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    pub data: Option<PathBuf>,
    /// `--tokenizer-sample-bytes`: text a new tokenizer trains on.
    pub tokenizer_sample_bytes: u64,
    pub config: String,
    pub device: String,
    pub steps: Option<usize>,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    pub lr: Option<f32>,
    pub save_interval: Option<usize>,
    pub grad_accum: Option<usize>,
    pub optimizer: String,
    /// `--sophia-rho`, `--sophia-k` (only with `--optimizer sophia`).
    pub sophia_rho: Option<f32>,
    pub sophia_k: Option<usize>,
    pub resume: bool,
    pub out: PathBuf,
    pub sample_tokens: usize,
    pub seed: u64,
    /// Store weights in BF16 (`IRONTENSOR_BF16=1`).
    pub bf16: bool,
    /// `--init`: start from this model (GGUF file, Hugging Face folder, IronTensor checkpoint or run).
    pub init: Option<PathBuf>,
    /// `--precision` (None: `precision_env`).
    pub precision: Option<String>,
    /// `IRONTENSOR_MATMUL`'s choice.
    pub precision_env: crate::settings::PrecisionChoice,
    /// `--lora RANK` and its `--lora-alpha`, `--lora-dropout`, `--lora-targets`.
    pub lora: Option<usize>,
    pub lora_alpha: Option<f32>,
    pub lora_dropout: Option<f32>,
    pub lora_targets: Option<String>,
    /// `--checkpoint-activations`: recompute each transformer block in the backward pass.
    pub checkpoint_activations: bool,
    /// JSONL data: `--train-on-prompt` (count every token) and `--no-pack` (a record a window).
    pub finetune: super::FinetuneOptions,
}

impl Default for TrainOptions {
    /// `irontensor train` with no flags.
    fn default() -> Self {
        TrainOptions {
            data: None,
            tokenizer_sample_bytes: super::TOKENIZER_SAMPLE_BYTES,
            config: "shakespeare".into(),
            device: "auto".into(),
            steps: None,
            batch: None,
            seq: None,
            lr: None,
            save_interval: None,
            grad_accum: None,
            optimizer: "adamw".into(),
            sophia_rho: None,
            sophia_k: None,
            resume: false,
            out: PathBuf::from("runs/shakespeare"),
            sample_tokens: 300,
            seed: 0,
            bf16: false,
            init: None,
            finetune: Default::default(),
            precision: None,
            precision_env: Default::default(),
            lora: None,
            lora_alpha: None,
            lora_dropout: None,
            lora_targets: None,
            checkpoint_activations: false,
        }
    }
}

/// What a run will train: the model, the training configuration and the batch shape.
#[derive(Clone, Debug)]
pub struct Plan {
    pub model: ModelConfig,
    pub train: TrainingConfig,
    pub batch: usize,
    pub seq: usize,
    /// The smaller model a CPU run of the default preset trains, said so on stderr.
    pub small_cpu_run: bool,
}

/// The run `o` asks for on `device`: the GPU gets the full model; the CPU a smaller one that
/// finishes in minutes. A flag out of its range is an error naming it and the range.
pub fn plan(o: &TrainOptions, device: Device) -> Result<Plan> {
    plan_from(o, device, None)
}

/// `plan` for a run that starts from a model `init` describes (`--init`): its config, not
/// `--config`'s, and a fine-tuning learning rate (5e-5 unless `--lr` says).
pub fn plan_from(o: &TrainOptions, device: Device, init: Option<&ModelConfig>) -> Result<Plan> {
    check_counts(o)?;
    let optimizer = OptimizerKind::parse("--optimizer", &o.optimizer)?;
    let mut m = match init {
        Some(c) => c.clone(),
        None => model_config(&o.config)?,
    };
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
        optimizer,
        checkpoint_dir: o.out.join("checkpoints").to_string_lossy().into_owned(),
        seed: o.seed,
        use_bf16: o.bf16,
        checkpoint_activations: o.checkpoint_activations,
        ..Default::default()
    };
    optimizer.set_defaults(&mut t);
    if optimizer != OptimizerKind::Sophia && (o.sophia_rho.is_some() || o.sophia_k.is_some()) {
        let flag = if o.sophia_rho.is_some() { "--sophia-rho" } else { "--sophia-k" };
        return Err(Error::Invalid(format!("{flag} is for --optimizer sophia, not {}", o.optimizer)));
    }
    t.sophia_rho = o.sophia_rho.unwrap_or(t.sophia_rho);
    t.sophia_k = o.sophia_k.unwrap_or(t.sophia_k);
    let (mut batch, mut seq) = (64, 256);
    if init.is_some() {
        t.learning_rate = 5e-5;
    }
    t.lora = lora_config(o, init.is_some())?;
    if t.lora.is_some() {
        t.learning_rate = 2e-4; // adapters start at zero and train faster than whole weights
        t.base_model = o.init.as_ref().map(|p| std::path::absolute(p).unwrap_or(p.clone()).display().to_string());
    }
    let small_cpu_run = device == Device::Cpu && o.config == "shakespeare" && init.is_none();
    if small_cpu_run {
        (m.hidden_dim, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_dim, m.max_seq_len) =
            (192, 4, 6, 6, 512, 128);
        (batch, seq) = (16, 128);
        (t.total_steps, t.warmup_steps, t.eval_interval, t.save_interval) = (500, 50, 100, 250);
        m.dropout = 0.1;
    }
    if let Some(s) = o.steps {
        t.total_steps = s;
        t.warmup_steps = t.warmup_steps.min(s / 10);
        t.eval_interval = t.eval_interval.min(s);
    }
    batch = o.batch.unwrap_or(batch);
    seq = match o.seq {
        Some(s) if s > m.max_seq_len => {
            let model = match &o.init {
                Some(p) => format!("--init {}", p.display()),
                None => format!("--config {}", o.config),
            };
            let range = format!("must be between 1 and the model's max_seq_len {} ({model})", m.max_seq_len);
            return Err(bad_flag("seq", s, &range));
        }
        Some(s) => s,
        None => seq.min(m.max_seq_len), // the default fits itself to the model
    };
    if let Some(lr) = o.lr {
        t.learning_rate = lr;
    }
    t.save_interval = o.save_interval.unwrap_or(t.save_interval);
    t.grad_accum_steps = o.grad_accum.unwrap_or(1);
    if !batch.is_multiple_of(t.grad_accum_steps) {
        let why = format!("must be divisible by --grad-accum {}", t.grad_accum_steps);
        return Err(bad_flag("batch", batch, &why));
    }
    Ok(Plan { model: m, train: t, batch, seq, small_cpu_run })
}

/// `--lora RANK` and its options as a LoRA config (None without `--lora`); LoRA needs `--init`.
fn lora_config(o: &TrainOptions, init: bool) -> Result<Option<LoraConfig>> {
    let Some(rank) = o.lora else {
        let given = [("lora-alpha", o.lora_alpha.is_some()), ("lora-dropout", o.lora_dropout.is_some())];
        let given = given.into_iter().chain([("lora-targets", o.lora_targets.is_some())]);
        if let Some((flag, _)) = given.into_iter().find(|(_, g)| *g) {
            return Err(Error::Invalid(format!("--{flag} is for LoRA runs: add --lora RANK")));
        }
        return Ok(None);
    };
    if !init {
        return Err(bad_flag("lora", rank, "LoRA adapts a trained model: name it with --init"));
    }
    at_least_one("lora", rank)?;
    let c = LoraConfig {
        rank,
        alpha: o.lora_alpha.unwrap_or(2.0 * rank as f32),
        dropout: o.lora_dropout.unwrap_or(0.0),
        targets: LoraConfig::parse_targets(o.lora_targets.as_deref().unwrap_or("q,v"))?,
    };
    c.validate()?;
    Ok(Some(c))
}

/// The flags that must be positive counts (or a finite positive rate), checked first.
fn check_counts(o: &TrainOptions) -> Result<()> {
    let counts = [("steps", o.steps), ("batch", o.batch), ("seq", o.seq), ("save-interval", o.save_interval)];
    for (flag, v) in counts.into_iter().chain([("grad-accum", o.grad_accum), ("sophia-k", o.sophia_k)]) {
        if let Some(v) = v {
            at_least_one(flag, v)?;
        }
    }
    if let Some(lr) = o.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad_flag("lr", lr, "must be a finite number > 0"));
        }
    }
    if let Some(rho) = o.sophia_rho {
        if !(rho.is_finite() && rho > 0.0) {
            return Err(bad_flag("sophia-rho", rho, "must be a finite number > 0"));
        }
    }
    Ok(())
}

/// A preset by name, or a JSON file of ModelConfig fields.
fn model_config(name: &str) -> Result<ModelConfig> {
    if name.ends_with(".json") {
        let text = std::fs::read_to_string(name).map_err(|e| Error::Invalid(format!("--config {name}: {e}")))?;
        let c: ModelConfig =
            serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("--config {name}: {e}")))?;
        c.validate()?;
        Ok(c)
    } else {
        ModelConfig::preset(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(o: &TrainOptions) -> String {
        plan(o, Device::Cpu).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn cpu_default_is_the_small_model_and_gpu_the_preset() {
        let p = plan(&TrainOptions::default(), Device::Cpu).unwrap();
        assert!(p.small_cpu_run);
        assert_eq!((p.model.num_layers, p.model.hidden_dim, p.batch, p.seq), (4, 192, 16, 128));
        assert_eq!((p.train.total_steps, p.train.warmup_steps, p.train.save_interval), (500, 50, 250));
        assert_eq!(p.train.optimizer, OptimizerKind::AdamW);
        assert_eq!(p.train.learning_rate, 1e-3);
        let g = plan(&TrainOptions::default(), Device::Gpu).unwrap();
        assert!(!g.small_cpu_run);
        assert_eq!(g.model, ModelConfig::shakespeare());
        assert_eq!((g.batch, g.seq, g.train.total_steps), (64, 256, 600));
        assert_eq!(g.train.checkpoint_dir, PathBuf::from("runs/shakespeare").join("checkpoints").to_string_lossy());
    }

    #[test]
    fn overrides_replace_the_defaults() {
        let o = TrainOptions {
            steps: Some(30),
            batch: Some(6),
            seq: Some(100),
            lr: Some(0.5),
            grad_accum: Some(3),
            save_interval: Some(7),
            optimizer: "lion".into(),
            checkpoint_activations: true,
            ..Default::default()
        };
        let p = plan(&o, Device::Cpu).unwrap();
        assert!(
            p.train.checkpoint_activations
                && !plan(&TrainOptions::default(), Device::Cpu).unwrap().train.checkpoint_activations
        );
        assert_eq!((p.batch, p.seq, p.train.total_steps, p.train.warmup_steps), (6, 100, 30, 3));
        assert_eq!((p.train.eval_interval, p.train.save_interval, p.train.grad_accum_steps), (30, 7, 3));
        assert_eq!((p.train.optimizer, p.train.learning_rate), (OptimizerKind::Lion, 0.5));
        let lion = plan(&TrainOptions { optimizer: "lion".into(), ..Default::default() }, Device::Cpu).unwrap();
        assert_eq!((lion.train.learning_rate, lion.train.beta1, lion.train.beta2), (2e-4, 0.99, 0.9));
        let o = TrainOptions {
            optimizer: "sophia".into(),
            sophia_rho: Some(0.05),
            sophia_k: Some(4),
            ..Default::default()
        };
        let sophia = plan(&o, Device::Cpu).unwrap().train;
        assert_eq!((sophia.optimizer, sophia.beta1, sophia.beta2), (OptimizerKind::Sophia, 0.965, 0.99));
        assert_eq!((sophia.learning_rate, sophia.sophia_rho, sophia.sophia_k), (6e-4, 0.05, 4));
    }

    #[test]
    fn the_default_seq_fits_the_model_but_an_explicit_one_is_checked() {
        let tiny = TrainOptions { config: "tiny".into(), ..Default::default() };
        let max = ModelConfig::tiny().max_seq_len;
        assert_eq!(plan(&tiny, Device::Gpu).unwrap().seq, 256.min(max));
        let e = err(&TrainOptions { seq: Some(max + 1), ..tiny });
        assert!(e.contains("--seq") && e.contains(&format!("max_seq_len {max}")), "{e}");
    }

    #[test]
    fn each_bad_flag_is_named_with_its_range() {
        let d = TrainOptions::default;
        let cases = [
            (TrainOptions { lr: Some(f32::NAN), ..d() }, "--lr NaN: must be a finite number > 0"),
            (TrainOptions { lr: Some(-1.0), ..d() }, "--lr -1: must be a finite number > 0"),
            (TrainOptions { lr: Some(f32::INFINITY), ..d() }, "--lr inf"),
            (TrainOptions { batch: Some(0), ..d() }, "--batch 0: must be at least 1"),
            (TrainOptions { seq: Some(0), ..d() }, "--seq 0: must be at least 1"),
            (TrainOptions { steps: Some(0), ..d() }, "--steps 0: must be at least 1"),
            (TrainOptions { grad_accum: Some(0), ..d() }, "--grad-accum 0: must be at least 1"),
            (TrainOptions { save_interval: Some(0), ..d() }, "--save-interval 0: must be at least 1"),
            (
                TrainOptions { batch: Some(10), grad_accum: Some(4), ..d() },
                "--batch 10: must be divisible by --grad-accum 4",
            ),
            (
                TrainOptions { optimizer: "sgd".into(), ..d() },
                "--optimizer sgd: expected adamw, adamw8bit, lion or sophia",
            ),
            (TrainOptions { sophia_rho: Some(0.0), ..d() }, "--sophia-rho 0: must be a finite number > 0"),
            (TrainOptions { sophia_k: Some(0), ..d() }, "--sophia-k 0: must be at least 1"),
            (TrainOptions { sophia_k: Some(5), ..d() }, "--sophia-k is for --optimizer sophia, not adamw"),
            (TrainOptions { config: "huge".into(), ..d() }, "huge"),
        ];
        for (o, want) in cases {
            let e = err(&o);
            assert!(e.contains(want), "{e:?} does not contain {want:?}");
        }
    }
}
