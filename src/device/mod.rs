//! Devices and storage: `Device::{Cpu, Gpu}` and the `Storage` a tensor points into.

pub mod cpu;
pub mod gpu;

use crate::{Error, Result};
use std::sync::{Arc, OnceLock, RwLock};

pub use cpu::CpuBuffer;
pub use gpu::GpuBuffer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    /// The device chosen by `IRONTENSOR_DEVICE=cpu|gpu|auto` (default auto: a hardware GPU
    /// when one is found). Panics on a bad value; `from_env` reports it as an error.
    pub fn default_device() -> Device {
        static CHOSEN: OnceLock<Device> = OnceLock::new();
        *CHOSEN.get_or_init(|| Device::from_env().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Reads `IRONTENSOR_DEVICE`.
    pub fn from_env() -> Result<Device> {
        let want = std::env::var("IRONTENSOR_DEVICE").unwrap_or_default();
        match want.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => match gpu::context() {
                Ok(_) => Ok(Device::Gpu),
                Err(e) => Err(Error::Device(format!("IRONTENSOR_DEVICE=gpu but {e}"))),
            },
            // A software adapter (lavapipe) is slower than the CPU backend: auto skips it.
            "" | "auto" => Ok(match gpu::context() {
                Ok(c) if c.info.device_type != wgpu::DeviceType::Cpu => Device::Gpu,
                _ => Device::Cpu,
            }),
            other => Err(Error::Invalid(format!("IRONTENSOR_DEVICE={other}: expected cpu, gpu or auto"))),
        }
    }

    /// Checks `IRONTENSOR_DEVICE` like `from_env`, but starts the GPU only when it says `gpu`
    /// (a run on the CPU then never pays for adapter and device creation).
    pub fn check_env() -> Result<()> {
        match std::env::var("IRONTENSOR_DEVICE").unwrap_or_default().to_ascii_lowercase().as_str() {
            "" | "auto" | "cpu" => Ok(()),
            _ => Device::from_env().map(|_| ()),
        }
    }

    /// Parses "cpu", "gpu" or "auto"; "gpu" fails when no adapter is found.
    pub fn parse(name: &str) -> Result<Device> {
        match name.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "gpu" => gpu::context().map(|_| Device::Gpu),
            "auto" => Ok(Device::default_device()),
            other => Err(Error::Invalid(format!("unknown device {other:?}: expected cpu, gpu or auto"))),
        }
    }

    /// Whether a GPU adapter is usable in this process.
    pub fn gpu_available() -> bool {
        gpu::context().is_ok()
    }

    /// Bytes of tensor storage alive on this device now, and the peak since the last reset.
    pub fn memory(self) -> (u64, u64) {
        match self {
            Device::Cpu => cpu::memory(),
            Device::Gpu => gpu::context().map(|c| c.memory()).unwrap_or((0, 0)),
        }
    }

    pub fn reset_peak_memory(self) {
        match self {
            Device::Cpu => cpu::reset_peak_memory(),
            Device::Gpu => {
                if let Ok(c) = gpu::context() {
                    c.reset_peak_memory()
                }
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

/// Where a tensor's elements live. Clones share the same memory.
#[derive(Clone)]
pub enum Storage {
    Cpu(Arc<RwLock<CpuBuffer>>),
    Gpu(Arc<GpuBuffer>),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Gpu(_) => Device::Gpu,
        }
    }

    pub fn same_as(&self, other: &Storage) -> bool {
        match (self, other) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Arc::ptr_eq(a, b),
            (Storage::Gpu(a), Storage::Gpu(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
