//! Compiled pipelines kept on disk across runs, where the adapter allows it (Vulkan).
//!
//! One file per adapter in the settings' cache directory (`IRONTENSOR_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/irontensor`, else `~/.cache/irontensor`; none when unconfigured): wgpu's pipeline-cache data followed by its SHA-256, so that a file
//! damaged on disk is ignored instead of reaching the driver.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const DIGEST: usize = 32;

pub(super) struct DiskCache {
    /// Given to every compute pipeline; None where the adapter has no cache or it is off.
    pub(super) cache: Option<wgpu::PipelineCache>,
    path: Option<PathBuf>,
    /// One line for `irontensor info` and the start-up report.
    pub(super) status: String,
    /// Pipelines compiled when the file was last checked, and the SHA-256 of the data it holds.
    saved: Mutex<(usize, Vec<u8>)>,
}

impl DiskCache {
    /// Loads this adapter's cache file into a new pipeline cache. Never fails: a missing,
    /// damaged or foreign file gives an empty cache, and the reason is in `status`.
    pub(super) fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        features: wgpu::Features,
        dir: Option<&Path>,
    ) -> DiskCache {
        let off = |status: String| DiskCache { cache: None, path: None, status, saved: Mutex::new((0, Vec::new())) };
        let key = wgpu::util::pipeline_cache_key(info).filter(|_| features.contains(wgpu::Features::PIPELINE_CACHE));
        let Some(key) = key else {
            return off(format!("not available on {:?}", info.backend));
        };
        let Some(dir) = dir else {
            return off("off (IRONTENSOR_CACHE_DIR)".into());
        };
        let path = dir.join(key);
        let mut digest = Vec::new();
        let (cache, note) = match std::fs::read(&path) {
            Ok(bytes) => match checked(&bytes) {
                None => (None, "ignored a damaged file".to_string()),
                Some(data) => match create(device, Some(data)) {
                    Some(cache) => {
                        digest = bytes[data.len()..].to_vec();
                        (Some(cache), format!("loaded {} bytes", data.len()))
                    }
                    None => (None, "ignored a file from another device, driver or wgpu".to_string()),
                },
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, "empty".to_string()),
            Err(e) => (None, format!("ignored an unreadable file: {e}")),
        };
        let status = format!("{} ({note})", path.display());
        let Some(cache) = cache.or_else(|| create(device, None)) else {
            return off(format!("{} (the driver refused a pipeline cache)", path.display()));
        };
        DiskCache { cache: Some(cache), path: Some(path), status, saved: Mutex::new((0, digest)) }
    }

    /// Writes the cache file if pipelines were compiled since the last call (`compiled` counts
    /// them) and the data changed. A failure is a warning, printed once per process.
    pub(super) fn save(&self, compiled: usize) {
        let (Some(cache), Some(path)) = (&self.cache, &self.path) else { return };
        let mut saved = self.saved.lock().unwrap();
        if saved.0 == compiled {
            return;
        }
        saved.0 = compiled;
        let Some(data) = cache.get_data() else { return };
        let digest = Sha256::digest(&data).to_vec();
        if digest == saved.1 {
            return;
        }
        saved.1.clone_from(&digest);
        if let Err(e) = write_atomic(path, &data, &digest) {
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "warning: pipeline cache not saved to {}: {e} (IRONTENSOR_CACHE_DIR=off turns it off)",
                    path.display()
                );
            }
        }
    }
}

/// A pipeline cache from `data`, or None if wgpu reports an error (its own checks of the header
/// cover another device, driver or wgpu version).
fn create(device: &wgpu::Device, data: Option<&[u8]>) -> Option<wgpu::PipelineCache> {
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    // SAFETY: `data` is what `get_data` returned in an earlier run, as its checksum shows; wgpu
    // checks that it came from this adapter and wgpu version, and falls back to an empty cache.
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor { label: Some("irontensor"), data, fallback: true })
    };
    let refused = pollster::block_on(validation.pop()).is_some() | pollster::block_on(memory.pop()).is_some();
    (!refused).then_some(cache)
}

/// The data of a cache file whose trailing SHA-256 matches.
fn checked(bytes: &[u8]) -> Option<&[u8]> {
    let (data, digest) = bytes.split_at_checked(bytes.len().checked_sub(DIGEST)?)?;
    (Sha256::digest(data).as_slice() == digest).then_some(data)
}

/// Writes `data` and its SHA-256 (`digest`) to a temporary file beside `path`, then renames it over
/// `path`, so that readers see the old file or the new one, never a part. No fsync: a file torn
/// by a crash fails its checksum and is ignored, which costs only a recompile.
fn write_atomic(path: &Path, data: &[u8], digest: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.write_all(digest)?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
