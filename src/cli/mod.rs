//! The `irontensor` commands as library code: main.rs parses the flags and calls these.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set on MPI ranks other than 0, so that the job's output is rank 0's alone.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Whether this process's notes are silenced (an MPI rank other than 0).
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// `eprintln!`, except on MPI ranks other than 0.
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            eprintln!($($arg)*);
        }
    };
}

mod bench;
mod eval;
mod export;
mod finetune;
mod generate;
mod info;
mod lock;
mod plan;
mod prepare;
mod train;

pub use bench::{bench_generate, bench_kernels, bench_train, BenchTrainOptions, Kernel};
pub use eval::{eval, EvalOptions};
pub use export::export;
pub use finetune::{
    encode_file, is_finetune_jsonl, prepare_jsonl, FinetuneOptions, ModelText, PreparedJsonl, VAL_EVERY,
};
pub use generate::{generate, load_model, write_text, GenerateOptions};
pub use info::info;
pub use lock::RunLock;
pub use plan::{plan, plan_from, Plan, TrainOptions};
pub use prepare::{prepare, prepare_data, prepare_with, DataOptions, Prepared, TOKENIZER_SAMPLE_BYTES};
pub use train::train;

use crate::settings::PrecisionChoice;
use crate::{Device, Error, MatmulPrecision, Result};

/// An error for a flag's value: `--lr nan: must be finite and > 0`.
fn bad_flag(flag: &str, value: impl std::fmt::Display, allowed: &str) -> Error {
    Error::Invalid(format!("--{flag} {value}: {allowed}"))
}

/// `value` as a count of at least 1, or an error naming `flag`.
fn at_least_one(flag: &str, value: usize) -> Result<usize> {
    if value == 0 {
        return Err(bad_flag(flag, value, "must be at least 1"));
    }
    Ok(value)
}

/// The device's name for the "model: ..." line.
fn device_name(device: crate::Device) -> String {
    // gpu::started: a run on the CPU does not start the GPU to name it.
    match (device, crate::device::gpu::started()) {
        (crate::Device::Gpu, Some(ctx)) => format!("{}, {:?}", ctx.info.name, ctx.info.backend),
        _ => format!("{} threads", rayon::current_num_threads()),
    }
}

/// `irontensor tokenize`: the tokenizer and token shards of run directory `out`, under its lock.
pub fn tokenize(data: Option<&std::path::Path>, o: &DataOptions, out: &std::path::Path) -> Result<()> {
    if o.vocab < 257 {
        return Err(bad_flag("vocab", o.vocab, "must be at least 257 (256 byte tokens and <|endoftext|>)"));
    }
    let _lock = RunLock::take(out)?;
    prepare_data(data, o, out, 1, None)?.tokenizer.get().map(|_| ())
}

/// A byte count as `--tokenizer-sample-bytes` takes it: a number with an optional K, M or G
/// (powers of 1024), e.g. 300M.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("{text}: expected a number of bytes with an optional K, M or G, e.g. 300M")),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("{text}: expected a number of bytes, e.g. 300M"))?;
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(|| format!("{text}: must be between 1 byte and 16 EB"))
}

/// Sets how GPU matmuls multiply for a run on `device` as `--precision` (else
/// `IRONTENSOR_MATMUL`) asks, and says which it uses and why in one line. Mixed: f16 products on
/// cooperative matrices with f32 accumulation, f32 master weights and optimizer state, and
/// dynamic loss scaling (the trainer turns it on with f16 matmuls).
pub fn choose_precision(flag: Option<&str>, env: PrecisionChoice, device: Device) -> Result<MatmulPrecision> {
    let choice = match flag {
        Some(v) => PrecisionChoice::parse("--precision", v)?,
        None => env,
    };
    let coop = device == Device::Gpu && crate::ops::coop_matmul_supported();
    let (precision, why) = match (choice, coop) {
        (PrecisionChoice::Fp32, _) => (MatmulPrecision::FP32, "fp32, as asked: f32 matmuls"),
        (PrecisionChoice::Mixed, false) => {
            let why = "this device has no f16 cooperative matrices (16×16, subgroups of 32: NVIDIA through Vulkan); use fp32 or auto";
            return Err(bad_flag("precision", "mixed", why));
        }
        (_, true) => (
            MatmulPrecision::F16,
            "mixed: f16 products on the GPU's cooperative matrices, f32 sums, weights and optimizer state, \
             dynamic loss scaling (--precision fp32 for f32 matmuls)",
        ),
        (PrecisionChoice::Auto, false) if device == Device::Cpu => {
            (MatmulPrecision::FP32, "fp32: the CPU multiplies in f32")
        }
        (PrecisionChoice::Auto, false) => {
            (MatmulPrecision::FP32, "fp32: this GPU has no f16 cooperative matrices (16×16, subgroups of 32)")
        }
    };
    crate::ops::set_matmul_precision(precision)?;
    note!("precision: {why}");
    Ok(precision)
}
