//! The GPU backend: one global wgpu context, its pipeline cache, buffer pool and command batch.

mod adapters;
mod batch;
mod cache;
mod counters;
mod kernel;
mod observer;
mod pool;
mod quiet;

pub use adapters::{adapter_names, hardware_present};
pub use batch::window;
pub use batch::CommandBatch;
pub(crate) use counters::count;
pub use counters::{counters, Counters};
pub(crate) use kernel::{kernel_params, op_codes, to_u32};
pub use kernel::{with_prelude, Kernel, KernelParams, ParamsLayout, WG};
pub use observer::{set_observer, Observer};

use adapters::{coop_matmul_supported, probe};
use observer::observer;

use crate::settings::GpuSettings;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The WGSL of `kernel`: its built-in source, or, for kernel work on a machine without Rust,
/// `<kernel_dir>/<name>.wgsl` when that file exists (`IRONTENSOR_KERNEL_DIR`; the whole source,
/// constants too, but not the prelude, which `pipeline` prepends to either).
fn kernel_source(kernel: &Kernel, kernel_dir: Option<&std::path::Path>) -> String {
    let Some(dir) = kernel_dir else { return kernel.source.into() };
    let path = dir.join(format!("{}.wgsl", kernel.name));
    match std::fs::read_to_string(&path) {
        Ok(source) => {
            eprintln!("kernel {} from {}", kernel.name, path.display());
            source
        }
        Err(_) => kernel.source.into(),
    }
}

/// What the GPU context starts with; set by [`configure`] before it starts.
static SETTINGS: Mutex<Option<GpuSettings>> = Mutex::new(None);

/// Sets what the GPU context starts with. An error once the context has started with other settings.
pub fn configure(settings: &GpuSettings) -> Result<()> {
    let mut current = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
    if CTX.get().is_some() && current.clone().unwrap_or_default() != *settings {
        return Err(Error::Invalid(
            "configure: the GPU context has already started with other settings; configure before the first GPU use"
                .into(),
        ));
    }
    *current = Some(settings.clone());
    Ok(())
}

/// GPU memory behind a tensor. Dropping it hands the buffer back to the pool.
pub struct GpuBuffer {
    pub(crate) buffer: wgpu::Buffer,
    /// The host data a u32 buffer was uploaded from (token ids). u32 buffers are never written
    /// in place, so this stays equal to the GPU copy and checks on ids need no readback.
    pub(crate) host_u32: Option<Box<[u32]>>,
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Ok(ctx) = context() {
            ctx.retire(self.buffer.clone());
        }
    }
}

pub struct GpuContext {
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// Other adapters found (name, backend, type), for `irontensor info`.
    pub others: Vec<String>,
    /// Whether the f16 cooperative-matrix matmul can run here (see `ops::MatmulPrecision`).
    pub coop_matmul: bool,
    compiled: Mutex<Compiled>,
    kernel_dir: Option<std::path::PathBuf>,
    /// Nanoseconds spent creating shader modules and pipelines.
    compile_ns: AtomicU64,
    disk_cache: cache::DiskCache,
    pool: pool::Pool,
    batch: Mutex<batch::Batch>,
    /// Timestamp query sets of submitted batches, for the profiler.
    timing: Mutex<batch::Timing>,
    sync_every_op: bool,
    shader_checks: bool,
    /// The most bytes of one buffer a dispatch binds (see `max_binding`).
    max_binding: u64,
    /// The device's own memory in bytes, where the driver says or the settings give it.
    memory: Option<u64>,
    /// The first error wgpu reported and nobody has returned yet (see `check`).
    error: std::sync::Arc<Mutex<Option<String>>>,
    /// Small constant tables by content (see `constant`).
    constants: Mutex<HashMap<Vec<u8>, std::sync::Arc<GpuBuffer>>>,
}

/// Shader modules by kernel name, and pipelines by (kernel name, entry point).
#[derive(Default)]
struct Compiled {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    pipelines: HashMap<(&'static str, &'static str), wgpu::ComputePipeline>,
}

/// Optional adapter features we use when present.
const WANTED: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS)
    .union(wgpu::Features::IMMEDIATES)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    .union(wgpu::Features::PIPELINE_CACHE);

/// The global GPU context, created on first use; an error if no adapter is usable.
pub fn context() -> Result<&'static GpuContext> {
    CTX.get_or_init(GpuContext::new).as_ref().map_err(|e| Error::Device(e.clone()))
}

static CTX: OnceLock<std::result::Result<GpuContext, String>> = OnceLock::new();

/// Saves the global context's pipeline cache (see `GpuContext::save_pipeline_cache`), if a
/// context was started.
pub fn save_pipeline_cache() {
    if let Some(ctx) = started() {
        ctx.save_pipeline_cache();
    }
}

/// The global context if one was already created; never starts one.
pub fn started() -> Option<&'static GpuContext> {
    CTX.get().and_then(|c| c.as_ref().ok())
}

impl GpuContext {
    fn new() -> std::result::Result<GpuContext, String> {
        let settings = SETTINGS.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        let adapters = &probe().adapters;
        if adapters.is_empty() {
            return Err("no GPU adapter found (Metal, Vulkan or DX12); on Linux install a Vulkan driver, \
                        e.g. `apt-get install mesa-vulkan-drivers`, or use IRONTENSOR_DEVICE=cpu"
                .into());
        }
        let names: Vec<String> = adapters.iter().map(adapters::describe).collect();
        let hardware = adapters.iter().filter(|a| a.get_info().device_type != wgpu::DeviceType::Cpu).count();
        let index = adapters::choose(&names, hardware, settings.index, settings.local_rank)?;
        let adapter = &adapters[index];
        let others = names.iter().enumerate().filter(|(k, _)| *k != index).map(|(_, n)| n.clone()).collect();
        let features = adapter.features() & WANTED;
        let limits = adapter.limits();
        let experimental_features = if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            // SAFETY: wgpu's experimental features are only unvalidated; the one we request is
            // used by the opt-in f16 matmul alone, whose indexing stays inside its tiles.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let coop_matmul = coop_matmul_supported(adapter, features, &limits);
        let (device, queue) = quiet::stderr(|| {
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("irontensor"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features,
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }))
        })
        .map_err(|e| format!("the GPU adapter {} refused a device: {e}", adapter.get_info().name))?;
        let error = std::sync::Arc::new(Mutex::new(None));
        let slot = error.clone();
        // wgpu's default handler panics (and a panic inside a batch aborts): keep the first
        // error instead, for `check` to return as the failing op's `Error`.
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(|| e.to_string());
        }));
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(settings.max_binding.unwrap_or(u64::MAX))
            / 256
            * 256;
        let memory = settings.memory.or_else(|| adapters::memory(adapter));
        let info = adapter.get_info();
        let disk_cache = cache::DiskCache::open(&device, &info, features, settings.cache_dir.as_deref());
        Ok(GpuContext {
            info,
            features,
            limits,
            device,
            queue,
            others,
            coop_matmul,
            compiled: Mutex::new(Compiled::default()),
            kernel_dir: settings.kernel_dir,
            compile_ns: AtomicU64::new(0),
            disk_cache,
            pool: pool::Pool::default(),
            batch: Mutex::new(batch::Batch::default()),
            timing: Mutex::new(batch::Timing::default()),
            sync_every_op: settings.sync_every_op,
            shader_checks: settings.shader_checks,
            max_binding,
            memory,
            error,
            constants: Mutex::new(HashMap::new()),
        })
    }

    fn pipeline(&self, kernel: &Kernel, entry: &'static str) -> wgpu::ComputePipeline {
        let mut compiled = self.compiled.lock().unwrap();
        let Compiled { modules, pipelines } = &mut *compiled;
        if let Some(p) = pipelines.get(&(kernel.name, entry)) {
            return p.clone();
        }
        let t = Instant::now();
        // One module per WGSL file: its entry points share the parsed and validated source.
        let module = modules.entry(kernel.name).or_insert_with(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name),
                source: wgpu::ShaderSource::Wgsl(
                    with_prelude(&kernel_source(kernel, self.kernel_dir.as_deref())).into(),
                ),
            };
            let checks = if self.shader_checks {
                wgpu::ShaderRuntimeChecks::checked()
            } else {
                wgpu::ShaderRuntimeChecks::unchecked()
            };
            // SAFETY: our kernels bound their own indices and loops (tests run them at awkward
            // sizes, and IRONTENSOR_SHADER_CHECKS=1 turns wgpu's checks back on).
            unsafe { self.device.create_shader_module_trusted(desc, checks) }
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: self.disk_cache.cache.as_ref(),
        });
        self.compile_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        pipelines.insert((kernel.name, entry), pipeline.clone());
        pipeline
    }

    /// Pipelines created so far, and the time spent creating them and their shader modules.
    /// (Drivers may finish compiling at the first dispatch, which this does not see.)
    pub fn compile_time(&self) -> (usize, Duration) {
        let n = self.compiled.lock().unwrap().pipelines.len();
        (n, Duration::from_nanos(self.compile_ns.load(Ordering::Relaxed)))
    }

    /// Where compiled pipelines are kept across runs, and what was loaded: one line.
    pub fn pipeline_cache(&self) -> &str {
        &self.disk_cache.status
    }

    /// Writes the pipeline cache file if pipelines were created since the last call.
    /// Never fails: a cache that cannot be written is a warning, printed once.
    pub fn save_pipeline_cache(&self) {
        let n = self.compiled.lock().unwrap().pipelines.len();
        self.disk_cache.save(n);
    }

    /// The most bytes of one buffer that one dispatch binds: the adapter's limits (2 GiB on
    /// Vulkan with NVIDIA), or less where the settings say (`IRONTENSOR_MAX_BINDING`). Tensor
    /// storage is laid out so that only a tensor larger than this needs a buffer larger than this;
    /// ops that take such tensors work on windows of it (`dispatch_windows`).
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// The device's memory in bytes: `IRONTENSOR_GPU_MEMORY`, else the driver's device-local
    /// heap (Vulkan), or the recommended working set (Metal); None where neither is known.
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
    }

    /// The error wgpu reported since the last check, as an `Error` naming `op`: a validation
    /// error or running out of memory ends that op, and the caller's work, with an `Err`.
    pub fn check(&self, op: &str) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            None => Ok(()),
            Some(e) if e.contains("OutOfMemory") || e.to_lowercase().contains("out of memory") => Err(Error::Device(
                format!("{op}: the GPU ran out of memory ({e}); run `irontensor train` with a smaller --batch or --seq, or BF16 weights"),
            )),
            Some(e) => Err(Error::Device(format!("{op}: the GPU refused the work: {e}"))),
        }
    }

    /// A buffer of at least `bytes` from the pool; its contents are undefined.
    /// Only GPU work recorded after this call may write it (`upload` writes from the host).
    pub fn alloc(&self, bytes: u64) -> GpuBuffer {
        let buffer = self.pool.take(&self.device, bytes, pool::Kind::Storage, true, self.max_binding);
        GpuBuffer { buffer, host_u32: None }
    }

    /// A buffer holding `data` (padded to 4 bytes).
    pub fn upload(&self, data: &[u8]) -> GpuBuffer {
        count(|c| c.uploads += 1);
        // Not a buffer that unsubmitted work still uses: this write lands before that work.
        let buffer = self.pool.take(&self.device, data.len() as u64, pool::Kind::Storage, false, self.max_binding);
        let buf = GpuBuffer { buffer, host_u32: None };
        if data.len().is_multiple_of(4) {
            self.queue.write_buffer(&buf.buffer, 0, data);
        } else {
            let mut padded = data.to_vec();
            padded.resize(data.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(&buf.buffer, 0, &padded);
        }
        buf
    }

    /// A buffer holding `data` that remembers it (see `GpuBuffer::host_u32`).
    pub fn upload_u32(&self, data: &[u32]) -> GpuBuffer {
        let mut buf = self.upload(bytemuck::cast_slice(data));
        buf.host_u32 = Some(data.into());
        buf
    }

    /// A buffer holding `data`, uploaded the first time these bytes are asked for and shared after
    /// (a table every call of an op reads, such as RoPE's frequencies: no upload per token).
    /// Never written: kernels bind it read-only.
    pub fn constant(&self, data: &[u8]) -> std::sync::Arc<GpuBuffer> {
        let mut tables = self.constants.lock().unwrap();
        if let Some(buf) = tables.get(data) {
            return buf.clone();
        }
        if tables.len() >= 256 {
            tables.clear(); // a bound on what a long-lived process keeps
        }
        let buf = std::sync::Arc::new(self.upload(data));
        tables.insert(data.to_vec(), buf.clone());
        buf
    }

    /// A buffer of `bytes` zeros (cleared in queue order).
    pub fn zeros(&self, bytes: u64) -> GpuBuffer {
        let buf = self.alloc(bytes);
        let size = bytes.div_ceil(4) * 4;
        if size > 0 {
            self.record(|enc| enc.clear_buffer(&buf.buffer, 0, Some(size)));
        }
        buf
    }

    /// Reads `len` bytes at `offset` of `buf`, after all queued work.
    pub fn read(&self, buf: &GpuBuffer, offset: u64, len: u64) -> Vec<u8> {
        let start = offset / 4 * 4;
        let end = (offset + len).div_ceil(4) * 4;
        if end == start {
            return Vec::new();
        }
        count(|c| c.reads += 1);
        let staging = self.pool.take(&self.device, end - start, pool::Kind::Readback, false, u64::MAX);
        self.record(|enc| enc.copy_buffer_to_buffer(&buf.buffer, start, &staging, 0, end - start));
        self.flush();
        let slice = staging.slice(0..end - start);
        slice.map_async(wgpu::MapMode::Read, |r| r.expect("GPU readback failed: device lost?"));
        self.wait();
        let out = {
            let view = slice.get_mapped_range().expect("GPU readback: mapping failed");
            let skip = (offset - start) as usize;
            view[skip..skip + len as usize].to_vec()
        };
        staging.unmap();
        self.pool.give(staging, pool::Kind::Readback);
        out
    }

    /// Blocks until all submitted work is done.
    pub fn wait(&self) {
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("GPU wait failed: device lost?");
        self.collect_timestamps();
    }

    /// Whether the profiler can time GPU work here (the adapter has `TIMESTAMP_QUERY`).
    pub fn timestamps(&self) -> bool {
        self.features.contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Bytes of GPU tensors alive now, and the most alive at once since the last reset.
    pub fn memory(&self) -> (u64, u64) {
        self.pool.usage()
    }

    pub fn reset_peak_memory(&self) {
        self.pool.reset_peak();
    }

    /// Whether the settings (`IRONTENSOR_SYNC_GPU=1`) asked to submit and wait after every op.
    pub fn sync_every_op(&self) -> bool {
        self.sync_every_op
    }

    /// Bytes the pool holds from the driver (live and cached).
    pub fn pool_bytes(&self) -> u64 {
        self.pool.held()
    }
}

/// Workgroup counts for `n` groups of a 1-D kernel: x capped at 65535, the rest in y.
/// Kernels rebuild the flat id with the prelude's `flat_group`.
pub fn grid(n: u32) -> [u32; 3] {
    let x = n.clamp(1, 65535);
    [x, n.div_ceil(x).max(1), 1]
}
