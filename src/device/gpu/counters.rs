//! Per-thread counts of the GPU work sent: dispatches, submits, host reads, uploads, bind groups.

use std::cell::Cell;

/// Work this thread sent to the GPU so far. Counted per thread, so that tests running side by
/// side do not see each other's work (ops dispatch on the thread that calls them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Compute dispatches queued.
    pub dispatches: u64,
    /// Command buffers submitted.
    pub submits: u64,
    /// Reads of GPU memory by the host: each one waits for all queued work.
    pub reads: u64,
    /// Host-to-GPU uploads.
    pub uploads: u64,
    /// Bind groups created (the rest of the dispatches reused one).
    pub bind_groups: u64,
}

thread_local! {
    static COUNTERS: Cell<Counters> = const { Cell::new(Counters { dispatches: 0, submits: 0, reads: 0, uploads: 0, bind_groups: 0 }) };
}

/// Adds to this thread's counters.
pub(crate) fn count(f: impl FnOnce(&mut Counters)) {
    COUNTERS.with(|c| {
        let mut v = c.get();
        f(&mut v);
        c.set(v);
    });
}

/// This thread's running totals; subtract two readings to count the work in between.
pub fn counters() -> Counters {
    COUNTERS.with(|c| c.get())
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        Counters {
            dispatches: self.dispatches - o.dispatches,
            submits: self.submits - o.submits,
            reads: self.reads - o.reads,
            uploads: self.uploads - o.uploads,
            bind_groups: self.bind_groups - o.bind_groups,
        }
    }
}
