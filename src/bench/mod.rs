//! `irontensor bench`: training throughput of named workloads and kernel benchmarks. Each
//! result is one JSON object per line on stdout (stable keys, so `dev/bench_compare.py` can
//! join ours with PyTorch's from `dev/bench_torch.py`); a readable summary goes to stderr.

mod generate;
mod kernels;
mod train;

pub use generate::{generate, GenerateBench};
pub use kernels::{attention, cross_entropy, matmul};
pub use train::{train, workload, TrainBench, Workload, WORKLOADS};

use crate::device::gpu;
use crate::{CommandBatch, Device, Result};
use std::time::Instant;

/// Waits for queued GPU work. On the CPU it does nothing, and it never starts a GPU context.
pub fn sync(device: Device) {
    if device == Device::Gpu {
        CommandBatch::sync();
    }
}

/// What runs `device`: the adapter's name and backend, or the CPU's thread count.
pub fn adapter(device: Device) -> String {
    match (device == Device::Gpu).then(gpu::context) {
        Some(Ok(ctx)) => format!("{} ({:?})", ctx.info.name, ctx.info.backend),
        _ => format!("cpu, {} threads", rayon::current_num_threads()),
    }
}

/// This process's resident memory now and its peak (VmRSS, VmHWM) in bytes; None off Linux.
pub fn process_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds this process has used so far, all threads together; None off Unix. On a machine
/// shared with other work this moves far less than the wall clock.
pub fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the one timespec it is given.
        let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
        ok.then_some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
    }
    #[cfg(not(unix))]
    None
}

/// Seconds per call of `f`: calls run in batches sized to ~0.2 s, each batch ends with a
/// sync (so queued GPU work is counted and the wait's latency is spread); best of 5 batches.
pub fn time_best(device: Device, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut batch = |reps: usize| -> Result<f64> {
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        sync(device);
        Ok(t.elapsed().as_secs_f64() / reps as f64)
    };
    let reps = (0.2 / batch(1)?).clamp(1.0, 100.0) as usize;
    let mut best = f64::MAX;
    for _ in 0..5 {
        best = best.min(batch(reps)?);
    }
    Ok(best)
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Prints one result line to stdout.
pub fn emit(v: &serde_json::Value) {
    println!("{v}");
}

/// Rounds for JSON, so lines stay short and comparable.
pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}
