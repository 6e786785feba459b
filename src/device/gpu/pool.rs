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
    live: AtomicU64,
    peak: AtomicU64,
    held: AtomicU64,
}

/// Size classes: 256 bytes, then four steps per power of two (at most 25% slack).
pub fn size_class(bytes: u64) -> u64 {
    if bytes <= 256 {
        return 256;
    }
    let p = bytes.next_power_of_two();
    let step = (p / 8).max(256);
    bytes.div_ceil(step) * step
}

impl Pool {
    pub fn take(&self, device: &wgpu::Device, bytes: u64, kind: Kind) -> wgpu::Buffer {
        let size = size_class(bytes);
        if kind == Kind::Storage {
            let live = self.live.fetch_add(size, Ordering::Relaxed) + size;
            self.peak.fetch_max(live, Ordering::Relaxed);
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
