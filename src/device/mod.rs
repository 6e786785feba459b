//! Devices and storage: `Device::{Cpu, Gpu}` and the `Storage` a tensor points into.

pub mod cpu;
pub mod gpu;

use crate::settings::DeviceChoice;
use crate::{Error, Result};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

pub use cpu::CpuBuffer;
pub use gpu::GpuBuffer;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Gpu,
}

/// The default device's choice (`crate::configure` sets it), and the device it resolved to.
static CHOICE: Mutex<DeviceChoice> = Mutex::new(DeviceChoice::Auto);
static CHOSEN: OnceLock<Device> = OnceLock::new();

/// Sets how the default device is chosen. An error once it was chosen another way.
pub fn set_default_choice(choice: DeviceChoice) -> Result<()> {
    let mut current = CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    if CHOSEN.get().is_some() && *current != choice {
        return Err(Error::Invalid(format!(
            "configure: the default device was already chosen ({:?}); configure before making tensors",
            *current
        )));
    }
    *current = choice;
    Ok(())
}

impl Device {
    /// The default device for new tensors, chosen once on first use as `crate::configure` said
    /// (default auto: a hardware GPU when one is found). Panics when a GPU was asked for and
    /// none is usable; `Device::choose` reports that as an error first.
    pub fn default_device() -> Device {
        *CHOSEN.get_or_init(|| {
            let choice = *CHOICE.lock().unwrap_or_else(|e| e.into_inner());
            Device::choose(choice).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    /// The device `choice` names; `Gpu` is an error when no adapter is usable.
    pub fn choose(choice: DeviceChoice) -> Result<Device> {
        match choice {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Gpu => match gpu::context() {
                Ok(_) => Ok(Device::Gpu),
                Err(e) => Err(Error::Device(format!("IRONTENSOR_DEVICE=gpu but {e}"))),
            },
            // Only a hardware adapter gets a context: creating a device on lavapipe costs start-up.
            DeviceChoice::Auto if gpu::hardware_present() && gpu::context().is_ok() => Ok(Device::Gpu),
            DeviceChoice::Auto => Ok(Device::Cpu),
        }
    }

    /// Checks `choice` like `choose`, but starts the GPU only when it says `Gpu`
    /// (a run on the CPU then never pays for adapter and device creation).
    pub fn check(choice: DeviceChoice) -> Result<()> {
        match choice {
            DeviceChoice::Gpu => Device::choose(choice).map(|_| ()),
            DeviceChoice::Auto | DeviceChoice::Cpu => Ok(()),
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
    /// Handles to this storage (tensors and views of it, and anything else keeping it alive).
    pub fn holders(&self) -> usize {
        match self {
            Storage::Cpu(b) => Arc::strong_count(b),
            Storage::Gpu(b) => Arc::strong_count(b),
        }
    }

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
