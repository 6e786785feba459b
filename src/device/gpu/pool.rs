//! A caching buffer pool by size class: after warm-up a training step allocates nothing new.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    Storage,
    Uniform,
    Readback,
}

impl Kind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            Kind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            Kind::Uniform => U::UNIFORM | U::COPY_DST,
            Kind::Readback => U::MAP_READ | U::COPY_DST,
        }
    }
}

#[derive(Default)]
pub struct Pool {
    free: Mutex<HashMap<(Kind, u64), Vec<wgpu::Buffer>>>,
    /// Storage buffers dropped while the open encoder may still use them. Work recorded later
    /// in that encoder runs after it, so GPU-written outputs may reuse them; a host write
    /// (`queue.write_buffer`, which lands before the encoder's work) may not.
    recent: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    live: AtomicU64,
    peak: AtomicU64,
    held: AtomicU64,
}

/// Size classes: 256 bytes, then sixteen steps per power of two (at most 6.25% slack: the
/// flat parameter and optimizer-state buffers are large and live for the whole run).
pub fn size_class(bytes: u64) -> u64 {
    if bytes <= 256 {
        return 256;
    }
    let p = bytes.next_power_of_two();
    let step = (p / 32).max(256);
    bytes.div_ceil(step) * step
}

impl Pool {
    /// A buffer of at least `bytes`; `gpu_written` allows one that recorded work still uses.
    /// The size class stops at `max_binding`, so a buffer is larger than one binding only when
    /// `bytes` is.
    pub fn take(
        &self,
        device: &wgpu::Device,
        bytes: u64,
        kind: Kind,
        gpu_written: bool,
        max_binding: u64,
    ) -> wgpu::Buffer {
        let size = match size_class(bytes) {
            s if s > max_binding && bytes <= max_binding => max_binding,
            s => s,
        };
        if kind == Kind::Storage {
            let live = self.live.fetch_add(size, Ordering::Relaxed) + size;
            self.peak.fetch_max(live, Ordering::Relaxed);
            if gpu_written {
                if let Some(buf) = self.recent.lock().unwrap().get_mut(&size).and_then(|v| v.pop()) {
                    return buf;
                }
            }
        }
        if let Some(buf) = self.free.lock().unwrap().get_mut(&(kind, size)).and_then(|v| v.pop()) {
            return buf;
        }
        self.held.fetch_add(size, Ordering::Relaxed);
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: kind.usage(),
            mapped_at_creation: false,
        })
    }

    /// Returns a buffer no queued or recorded work uses any more.
    pub fn give(&self, buf: wgpu::Buffer, kind: Kind) {
        let size = buf.size();
        if kind == Kind::Storage {
            self.live.fetch_sub(size, Ordering::Relaxed);
        }
        self.free.lock().unwrap().entry((kind, size)).or_default().push(buf);
    }

    /// A storage buffer dropped while the open encoder may still use it (see `recent`).
    pub fn retire(&self, buf: wgpu::Buffer) {
        self.live.fetch_sub(buf.size(), Ordering::Relaxed);
        self.recent.lock().unwrap().entry(buf.size()).or_default().push(buf);
    }

    /// The open encoder was submitted: its retired buffers are free for any use.
    pub fn settle(&self) {
        let mut free = self.free.lock().unwrap();
        for (size, bufs) in self.recent.lock().unwrap().drain() {
            free.entry((Kind::Storage, size)).or_default().extend(bufs);
        }
    }

    pub fn usage(&self) -> (u64, u64) {
        (self.live.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }

    pub fn reset_peak(&self) {
        self.peak.store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}
