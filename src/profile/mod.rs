//! The opt-in profiler ([`enable`]; the CLI turns it on for `IRONTENSOR_PROFILE=1`): time and calls per op, training
//! phases and steps. Ops are timed where they dispatch (`ops::on_device`), never in their bodies.
//!
//! CPU ops are timed by the wall clock (time spent in nested ops goes to the inner op). GPU ops
//! name the dispatches they queue; with `TIMESTAMP_QUERY` each dispatch's compute pass is timed
//! on the GPU and the time is added to its op once the work completes. Without it GPU ops are
//! counted only. Off, the whole cost is one relaxed atomic load per op and per dispatch.
//! The GPU context knows nothing of this module: `enable` registers it as the context's observer.

mod report;

pub use report::report;

use crate::device::{gpu, Device};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Whether profiling is on (off until [`enable`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

static PROFILE: Mutex<Profile> = Mutex::new(Profile { start: None, ops: None, phases: [Duration::ZERO; 3], steps: 0 });

/// A stage of a training step; the trainer wraps each in a [`phase`] guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Forward, Phase::Backward, Phase::Optimizer];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Forward => "Forward Pass",
            Phase::Backward => "Backward Pass",
            Phase::Optimizer => "Optimizer",
        }
    }
}

/// What one op on one device cost so far.
#[derive(Clone, Debug)]
pub struct OpStat {
    pub name: &'static str,
    pub device: Device,
    /// CPU: wall time in the op. GPU: kernel time from timestamp queries (zero without them).
    pub total: Duration,
    /// CPU ops: the process's CPU time (all threads) while in the op; zero where unmeasured.
    pub cpu: Duration,
    /// Calls of the op.
    pub count: u64,
    /// GPU dispatches the op queued (zero on the CPU).
    pub dispatches: u64,
}

#[derive(Default, Clone, Copy)]
struct Entry {
    total: Duration,
    cpu: Duration,
    count: u64,
    dispatches: u64,
}

struct Profile {
    /// When profiling started or was last reset: the report's total time runs from here.
    start: Option<Instant>,
    ops: Option<HashMap<(&'static str, Device), Entry>>,
    phases: [Duration; 3],
    steps: u64,
}

impl Profile {
    fn entry(&mut self, op: &'static str, device: Device) -> &mut Entry {
        self.ops.get_or_insert_with(HashMap::new).entry((op, device)).or_default()
    }
}

fn profile() -> MutexGuard<'static, Profile> {
    // A panic while holding it leaves only counters behind: keep going with them.
    PROFILE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether profiling is on.
#[inline]
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turns profiling on; the clock starts now unless it runs. GPU dispatches are named and
/// timed from now on (this registers the profiler with the GPU context).
pub fn enable() {
    gpu::set_observer(&GpuObserver);
    profile().start.get_or_insert_with(Instant::now);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Turns profiling off; what was recorded stays until [`reset`].
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Forgets everything recorded (GPU work already queued is waited for and dropped first)
/// and restarts the clock.
pub fn reset() {
    sync_gpu();
    let mut p = profile();
    p.ops = None;
    p.phases = [Duration::ZERO; 3];
    p.steps = 0;
    p.start = Some(Instant::now());
}

/// Counts one training step (the report's average step is total time / steps).
pub fn step() {
    if is_enabled() {
        profile().steps += 1;
    }
}

/// Steps counted since the last reset.
pub fn steps() -> u64 {
    profile().steps
}

/// Time spent in `phase` since the last reset, summed over steps.
pub fn phase_time(phase: Phase) -> Duration {
    sync_gpu();
    profile().phases[phase as usize]
}

/// Every op recorded since the last reset, most expensive first (waits for queued GPU work,
/// so its times are in).
pub fn ops() -> Vec<OpStat> {
    sync_gpu();
    let p = profile();
    let mut v: Vec<OpStat> = p
        .ops
        .iter()
        .flatten()
        .map(|(&(name, device), e)| OpStat {
            name,
            device,
            total: e.total,
            cpu: e.cpu,
            count: e.count,
            dispatches: e.dispatches,
        })
        .collect();
    v.sort_by(|a, b| b.total.cmp(&a.total).then(b.count.cmp(&a.count)).then(a.name.cmp(b.name)));
    v
}

/// Whether GPU op times are measured: the GPU is in use and has `TIMESTAMP_QUERY`.
/// None when no GPU context was started.
pub fn gpu_timestamps() -> Option<bool> {
    gpu::started().map(|c| c.timestamps())
}

/// Measures a training phase until dropped. While profiling, the GPU is synchronised at both
/// ends so queued work is charged to the phase that queued it.
#[must_use = "the phase ends when this guard is dropped"]
pub struct PhaseGuard {
    phase: Phase,
    start: Option<Instant>,
}

pub fn phase(phase: Phase) -> PhaseGuard {
    let start = is_enabled().then(|| {
        sync_gpu();
        Instant::now()
    });
    PhaseGuard { phase, start }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            sync_gpu();
            profile().phases[self.phase as usize] += start.elapsed();
        }
    }
}

/// Submits and waits for queued GPU work (which also collects its timestamps), if a GPU
/// context exists; never starts one.
fn sync_gpu() {
    if let Some(ctx) = gpu::started() {
        ctx.flush();
        ctx.wait();
    }
}

thread_local! {
    /// Wall and process CPU time spent in CPU ops nested inside the one running on this thread.
    static NESTED: Cell<(Duration, Duration)> = const { Cell::new((Duration::ZERO, Duration::ZERO)) };
    /// The GPU op whose dispatches this thread is queueing.
    static GPU_OP: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Runs a CPU op's kernel and charges its wall time (less nested ops') to `op`.
pub(crate) fn time_cpu<R>(op: &'static str, f: impl FnOnce() -> R) -> R {
    let outer = NESTED.replace((Duration::ZERO, Duration::ZERO));
    let (start, cpu_start) = (Instant::now(), process_cpu_time());
    let r = f();
    let (elapsed, cpu) = (start.elapsed(), process_cpu_time().saturating_sub(cpu_start));
    let inner = NESTED.replace((outer.0 + elapsed, outer.1 + cpu));
    let mut p = profile();
    let e = p.entry(op, Device::Cpu);
    e.total += elapsed.saturating_sub(inner.0);
    e.cpu += cpu.saturating_sub(inner.1);
    e.count += 1;
    r
}

/// User and system time of every thread of the process so far (zero where not measured):
/// against an op's wall time it shows how many cores the op kept busy.
fn process_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes the struct it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let t = |v: libc::timeval| Duration::new(v.tv_sec as u64, v.tv_usec as u32 * 1000);
            return t(u.ru_utime) + t(u.ru_stime);
        }
    }
    Duration::ZERO
}

/// Runs a GPU op's dispatch code with `op` as the name its dispatches are charged to.
pub(crate) fn on_gpu<R>(op: &'static str, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<&'static str>);
    impl Drop for Restore {
        fn drop(&mut self) {
            GPU_OP.set(self.0);
        }
    }
    let _restore = Restore(GPU_OP.replace(Some(op)));
    profile().entry(op, Device::Gpu).count += 1;
    f()
}

/// What the GPU context tells the profiler: which op each dispatch belongs to, and kernel times.
struct GpuObserver;

impl gpu::Observer for GpuObserver {
    fn enabled(&self) -> bool {
        is_enabled()
    }

    /// The op a GPU dispatch on this thread belongs to ("other" outside any op).
    fn op(&self) -> &'static str {
        GPU_OP.get().unwrap_or("other")
    }

    fn dispatched(&self, op: &'static str) {
        profile().entry(op, Device::Gpu).dispatches += 1;
    }

    /// Adds measured GPU kernel times, in ns, to their ops.
    fn timed(&self, times: &[(&'static str, f64)]) {
        let mut p = profile();
        for &(op, ns) in times {
            p.entry(op, Device::Gpu).total += Duration::from_nanos(ns.max(0.0).round() as u64);
        }
    }
}

/// The report's inputs, read under one lock.
struct Snapshot {
    total: Duration,
    steps: u64,
    phases: [Duration; 3],
    ops: Vec<OpStat>,
}

fn snapshot() -> Snapshot {
    let ops = ops();
    let p = profile();
    Snapshot { total: p.start.map(|s| s.elapsed()).unwrap_or_default(), steps: p.steps, phases: p.phases, ops }
}
