//! The hook through which the profiler hears of GPU work, so that the GPU context imports nothing from it.

use std::sync::OnceLock;

/// Someone told of the context's work: the profiler registers one when it is turned on, so that
/// this module needs nothing from it.
pub trait Observer: Send + Sync {
    /// Whether to name and time dispatches now (asked at every dispatch: keep it cheap).
    fn enabled(&self) -> bool;
    /// The op the dispatch being queued on this thread belongs to.
    fn op(&self) -> &'static str;
    /// One dispatch of `op` was queued.
    fn dispatched(&self, op: &'static str);
    /// GPU kernel times in ns of finished dispatches, by op.
    fn timed(&self, times: &[(&'static str, f64)]);
}

static OBSERVER: OnceLock<&'static dyn Observer> = OnceLock::new();

/// Registers the observer of GPU work; the first registration stays (there is one profiler).
pub fn set_observer(observer: &'static dyn Observer) {
    let _ = OBSERVER.set(observer);
}

pub(crate) fn observer() -> Option<&'static dyn Observer> {
    OBSERVER.get().copied()
}
