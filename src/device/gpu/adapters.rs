//! Finding the adapters: enumerated once, quietly, best first.

use super::quiet;
use std::sync::OnceLock;

/// The adapters found, best first (wgpu's GL backend left out).
pub(super) struct Probe {
    pub(super) adapters: Vec<wgpu::Adapter>,
}

/// Enumerates the adapters once. Drivers print to stderr while they load (Mesa's window system
/// code: "XDG_RUNTIME_DIR is invalid"), though nothing here draws: that is kept off the terminal.
pub(super) fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        quiet::stderr(|| {
            let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
            let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
            adapters.retain(|a| a.get_info().backend != wgpu::Backend::Gl);
            adapters.sort_by_key(|a| rank(a.get_info().device_type));
            Probe { adapters }
        })
    })
}

/// Each adapter as `irontensor info` lists it: its index is what `IRONTENSOR_GPU` and `--gpu` take.
pub fn adapter_names() -> Vec<String> {
    probe().adapters.iter().map(describe).collect()
}

pub(super) fn describe(a: &wgpu::Adapter) -> String {
    let i = a.get_info();
    format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
}

/// Which of `names` (best first; `hardware` of them GPUs, the rest software) this process takes:
/// `index` when given; else, under an MPI launcher on a machine of several GPUs, the one of its
/// local rank; else the first. An index that does not exist is an error naming those that do.
pub(super) fn choose(
    names: &[String],
    hardware: usize,
    index: Option<usize>,
    local_rank: Option<usize>,
) -> std::result::Result<usize, String> {
    let list = || names.iter().enumerate().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join("; ");
    match (index, local_rank) {
        (Some(k), _) if k < names.len() => Ok(k),
        (Some(k), _) => Err(format!("IRONTENSOR_GPU / --gpu {k}: there is no adapter {k}; the adapters are {}", list())),
        (None, Some(r)) if hardware > 1 && r < hardware => Ok(r),
        (None, Some(r)) if hardware > 1 => Err(format!(
            "MPI local rank {r} takes GPU {r}, but this machine has {hardware} GPUs ({}): start at most {hardware} ranks \
             on it, or set IRONTENSOR_GPU",
            list()
        )),
        _ if names.is_empty() => Err("no GPU adapter found".into()),
        _ => Ok(0),
    }
}

/// Whether a hardware GPU is present: what `auto` asks before it pays for a GPU context. A
/// software adapter (lavapipe) is slower than the CPU backend, and creating a device on it is not free.
pub fn hardware_present() -> bool {
    !no_gpu_device_nodes()
        && probe().adapters.first().is_some_and(|a| a.get_info().device_type != wgpu::DeviceType::Cpu)
}

/// On Linux every GPU a driver can use shows as a device node: a DRM render node, NVIDIA's
/// nodes, or WSL's /dev/dxg. With none there is no hardware adapter, and the enumeration (which
/// loads every installed driver, 100 ms and more with Mesa's) is skipped.
#[cfg(target_os = "linux")]
fn no_gpu_device_nodes() -> bool {
    let any = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
    };
    !(any("/dev/dri", "renderD") || any("/dev", "nvidia") || std::path::Path::new("/dev/dxg").exists())
}

#[cfg(not(target_os = "linux"))]
fn no_gpu_device_nodes() -> bool {
    false
}

fn rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// The adapter's memory in bytes, where it can be asked: on Vulkan its largest device-local
/// heap; on macOS (unified memory) three quarters of the machine's, about what Metal
/// recommends as one process's working set.
pub(super) fn memory(adapter: &wgpu::Adapter) -> Option<u64> {
    if adapter.get_info().backend == wgpu::Backend::Vulkan {
        return vulkan_memory(adapter);
    }
    system_memory().map(|b| b / 4 * 3)
}

/// The largest device-local heap of a Vulkan adapter (wgpu builds no Vulkan backend on Apple's
/// systems).
#[cfg(not(target_vendor = "apple"))]
fn vulkan_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the adapter outlives these calls, and they only read its properties.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let props = unsafe {
        hal.shared_instance().raw_instance().get_physical_device_memory_properties(hal.raw_physical_device())
    };
    const DEVICE_LOCAL: u32 = 1;
    let heaps = &props.memory_heaps[..props.memory_heap_count as usize];
    heaps.iter().filter(|h| h.flags.as_raw() & DEVICE_LOCAL != 0).map(|h| h.size).max()
}

#[cfg(target_vendor = "apple")]
fn vulkan_memory(_: &wgpu::Adapter) -> Option<u64> {
    None
}

#[cfg(target_os = "macos")]
fn system_memory() -> Option<u64> {
    let out = std::process::Command::new("sysctl").args(["-n", "hw.memsize"]).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[cfg(not(target_os = "macos"))]
fn system_memory() -> Option<u64> {
    None
}

/// The f16 cooperative-matrix matmul (src/ops/matmul_coop.wgsl) needs 16×16×16 f16 -> f32 matrices,
/// subgroups of exactly 32 (it splits a workgroup of 128 into 4 subgroups) and 24 KiB of workgroup
/// storage, as do the cooperative FlashAttention kernels (src/ops/flash_attention_coop.wgsl); those
/// need 31 KiB at head dims over 64 (checked where it is chosen).
pub(super) fn coop_matmul_supported(adapter: &wgpu::Adapter, features: wgpu::Features, limits: &wgpu::Limits) -> bool {
    use wgpu::CooperativeScalarType as S;
    let needed =
        wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
    let info = adapter.get_info();
    features.contains(needed)
        && info.subgroup_min_size == 32
        && info.subgroup_max_size == 32
        && limits.max_compute_workgroup_storage_size >= 24 * 1024
        && limits.max_compute_invocations_per_workgroup >= 128
        && adapter
            .cooperative_matrix_properties()
            .iter()
            .any(|p| (p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type) == (16, 16, 16, S::F16, S::F32))
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn each_rank_takes_its_gpu_and_a_missing_one_is_named() {
        let names: Vec<String> = ["H200 a", "H200 b", "llvmpipe"].map(String::from).to_vec();
        assert_eq!(choose(&names, 2, None, None), Ok(0));
        assert_eq!(choose(&names, 2, None, Some(1)), Ok(1));
        assert_eq!(choose(&names, 2, Some(2), Some(1)), Ok(2), "an explicit index wins");
        // One GPU (or only software adapters): the ranks share it.
        assert_eq!(choose(&names[1..], 1, None, Some(3)), Ok(0));
        let e = choose(&names, 2, None, Some(2)).unwrap_err();
        assert!(e.contains("local rank 2") && e.contains("2 GPUs") && e.contains("1: H200 b"), "{e}");
        let e = choose(&names, 2, Some(5), None).unwrap_err();
        assert!(e.contains("--gpu 5") && e.contains("2: llvmpipe"), "{e}");
        assert!(choose(&[], 0, None, None).is_err());
    }
}
