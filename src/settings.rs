//! Every setting the environment can give (`IRONTENSOR_*`, the MPI launcher's variables), read and checked in one place.
//!
//! The library never reads the environment itself: a program calls [`Settings::from_env`] and
//! passes the result on ([`crate::configure`], `Dist::start`, the trainer's config). Nobody
//! configuring anything gets [`Settings::default`]. This module sits below every other one.

use crate::{Error, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Which device new tensors go to by default (`IRONTENSOR_DEVICE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// A hardware GPU when there is one, else the CPU (a software adapter such as lavapipe is skipped).
    #[default]
    Auto,
    Cpu,
    Gpu,
}

/// How training multiplies (`--precision`; `IRONTENSOR_MATMUL` gives its default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// Mixed where the GPU has f16 cooperative matrices, else FP32.
    #[default]
    Auto,
    /// f32 matmuls.
    Fp32,
    /// f16 products on cooperative matrices (tensor cores) with f32 accumulation, f32 master
    /// weights and optimizer state, dynamic loss scaling.
    Mixed,
}

impl PrecisionChoice {
    /// "auto", "fp32" or "mixed" (`what` names the flag or variable in the error).
    pub fn parse(what: &str, value: &str) -> Result<PrecisionChoice> {
        match value {
            "auto" => Ok(PrecisionChoice::Auto),
            "fp32" => Ok(PrecisionChoice::Fp32),
            "mixed" => Ok(PrecisionChoice::Mixed),
            o => Err(Error::Invalid(format!("{what} {o}: expected auto, fp32 or mixed"))),
        }
    }
}

/// What the GPU context reads once, when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuSettings {
    /// `IRONTENSOR_SYNC_GPU=1`: submit and wait after every op.
    pub sync_every_op: bool,
    /// `IRONTENSOR_SHADER_CHECKS=1`: compile kernels with wgpu's run-time checks (every index
    /// clamped, every loop bounded), to find a kernel that reads or writes out of bounds. Off,
    /// kernels run as written: they check their own edges.
    pub shader_checks: bool,
    /// `IRONTENSOR_KERNEL_DIR`: a kernel named NAME compiles from `DIR/NAME.wgsl` when that file exists.
    pub kernel_dir: Option<PathBuf>,
    /// Where compiled pipelines are kept across runs; None keeps none (the default: no home is known).
    pub cache_dir: Option<PathBuf>,
    /// `IRONTENSOR_MAX_BINDING`, bytes: bind at most this much of a buffer at once, below the
    /// adapter's own limit (tests run the paths that split large tensors on small ones).
    pub max_binding: Option<u64>,
    /// `IRONTENSOR_GPU_MEMORY`, bytes (given in GiB): the memory `train` plans against, instead
    /// of what the driver reports.
    pub memory: Option<u64>,
    /// `IRONTENSOR_GPU=N` (or `--gpu N`): the adapter of that index in `irontensor info`'s list.
    pub index: Option<usize>,
    /// This process's rank on its machine under an MPI launcher: on a machine of several GPUs,
    /// without `index`, rank r takes the r-th.
    pub local_rank: Option<usize>,
}

/// The process's place in an MPI job as its launcher told it (Open MPI, MPICH/Hydra, PMIx).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Launcher {
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_SIZE` is set); else another launcher's variables were.
    pub open_mpi: bool,
    /// Ranks in the job: `OMPI_COMM_WORLD_SIZE` or `PMI_SIZE`.
    pub size: Option<usize>,
    /// This rank: `OMPI_COMM_WORLD_RANK`, `PMI_RANK` or `PMIX_RANK`.
    pub rank: Option<usize>,
    /// This rank among those on its machine: `OMPI_COMM_WORLD_LOCAL_RANK` or `MPI_LOCALRANKID`.
    pub local_rank: Option<usize>,
}

/// `IRONTENSOR_DIST_CRASH=RANK:STEP[:hang]` (tests): that rank exits, or hangs, at that step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashTest {
    pub rank: usize,
    pub step: usize,
    pub hang: bool,
}

/// Data-parallel training over MPI.
#[derive(Clone, Debug, PartialEq)]
pub struct DistSettings {
    /// `IRONTENSOR_DIST=on|off`; None: on when a launcher started the process.
    pub force: Option<bool>,
    /// The launcher's variables, when any are set.
    pub launcher: Option<Launcher>,
    /// `IRONTENSOR_MPI_LIB`: the MPI library to load instead of the usual names.
    pub mpi_lib: Option<String>,
    /// `IRONTENSOR_DIST_TIMEOUT`: how long a rank waits for a collective (default 600 s).
    pub timeout: Duration,
    /// `IRONTENSOR_DIST_BUCKET_MB`, in bytes: gradients are all-reduced in buckets of this size (default 4 MiB).
    pub bucket_bytes: usize,
    pub crash: Option<CrashTest>,
}

impl Default for DistSettings {
    fn default() -> Self {
        DistSettings {
            force: None,
            launcher: None,
            mpi_lib: None,
            timeout: Duration::from_secs(600),
            bucket_bytes: 4 << 20,
            crash: None,
        }
    }
}

impl DistSettings {
    /// Whether to join an MPI job: forced, or started by a launcher.
    pub fn enabled(&self) -> bool {
        self.force.unwrap_or(self.launcher.is_some())
    }
}

/// Everything configurable from outside; `Default` is what the library does unconfigured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    pub device: DeviceChoice,
    pub gpu: GpuSettings,
    /// `IRONTENSOR_BF16=1`: the CLI stores weights in BF16 (`TrainingConfig::use_bf16`).
    pub bf16: bool,
    /// `IRONTENSOR_PROFILE=1`: record op and phase times.
    pub profile: bool,
    /// `IRONTENSOR_MATMUL=coop` (mixed: GPU matmuls on f16 cooperative matrices where the
    /// adapter has them) or `fp32`; unset, auto. The library's default is FP32 unless this says
    /// mixed; `irontensor train` and `bench` take auto as mixed where the GPU has the matrices.
    pub precision: PrecisionChoice,
    pub dist: DistSettings,
}

/// Variables set by the launchers of Open MPI, MPICH (Hydra), Intel MPI and PMIx.
const LAUNCHER_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"];

impl Settings {
    /// Reads and checks every variable; a bad value is an error that names it and what it may be.
    pub fn from_env() -> Result<Settings> {
        Settings::from_vars(|name| std::env::var_os(name))
    }

    /// As `from_env`, with `var` standing in for the environment (tests, embedding programs).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Settings> {
        let vars = Vars(&var);
        let device = match vars.get("IRONTENSOR_DEVICE")?.map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("auto") => DeviceChoice::Auto,
            Some("cpu") => DeviceChoice::Cpu,
            Some("gpu") => DeviceChoice::Gpu,
            Some(_) => return Err(vars.bad("IRONTENSOR_DEVICE", "cpu, gpu or auto")),
        };
        let precision = match vars.get("IRONTENSOR_MATMUL")?.as_deref() {
            None => PrecisionChoice::Auto,
            Some("fp32") => PrecisionChoice::Fp32,
            Some("coop" | "f16") => PrecisionChoice::Mixed,
            Some(_) => return Err(vars.bad("IRONTENSOR_MATMUL", "coop (or f16) or fp32")),
        };
        let dist = dist(&vars)?;
        let gpu = GpuSettings {
            index: match vars.get("IRONTENSOR_GPU")? {
                None => None,
                Some(v) => {
                    Some(v.parse().map_err(|_| vars.bad("IRONTENSOR_GPU", "an adapter's index in `irontensor info`"))?)
                }
            },
            local_rank: dist.launcher.as_ref().and_then(|l| l.local_rank),
            sync_every_op: vars.flag("IRONTENSOR_SYNC_GPU")?,
            shader_checks: vars.flag("IRONTENSOR_SHADER_CHECKS")?,
            kernel_dir: vars.get("IRONTENSOR_KERNEL_DIR")?.map(PathBuf::from),
            cache_dir: cache_dir(&vars)?,
            max_binding: max_binding(&vars)?,
            memory: vars.positive("IRONTENSOR_GPU_MEMORY", "GiB")?.map(|g| (g * (1u64 << 30) as f64) as u64),
        };
        Ok(Settings {
            device,
            gpu,
            bf16: vars.flag("IRONTENSOR_BF16")?,
            profile: vars.flag("IRONTENSOR_PROFILE")?,
            precision,
            dist,
        })
    }
}

/// The environment, through the caller's lookup; an empty value counts as unset.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<OsString>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Result<Option<String>> {
        match (self.0)(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v.into_string().map(Some).map_err(|v| Error::Invalid(format!("{name}={v:?}: not valid UTF-8"))),
        }
    }

    fn is_set(&self, name: &str) -> bool {
        (self.0)(name).is_some_and(|v| !v.is_empty())
    }

    /// The error for a bad value of `name`, quoting it.
    fn bad(&self, name: &str, allowed: &str) -> Error {
        let value = (self.0)(name).unwrap_or_default();
        Error::Invalid(format!("{name}={}: expected {allowed}", value.to_string_lossy()))
    }

    /// A switch: `1` on, `0` or unset off.
    fn flag(&self, name: &str) -> Result<bool> {
        match self.get(name)?.as_deref() {
            None | Some("0") => Ok(false),
            Some("1") => Ok(true),
            Some(_) => Err(self.bad(name, "1 (on) or 0 (off)")),
        }
    }

    /// A positive number (seconds, MiB).
    fn positive(&self, name: &str, unit: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(name)? else { return Ok(None) };
        match v.parse::<f64>() {
            Ok(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
            _ => Err(self.bad(name, &format!("a positive number of {unit}"))),
        }
    }

    /// The first of `names` that is set, as a count or index.
    fn index(&self, names: &[&str]) -> Result<Option<usize>> {
        for name in names {
            if let Some(v) = self.get(name)? {
                return v.parse().map(Some).map_err(|_| self.bad(name, "a whole number (set by mpirun)"));
            }
        }
        Ok(None)
    }
}

/// `IRONTENSOR_MAX_BINDING`: a whole number of bytes, a multiple of 256 and at least 4096.
fn max_binding(vars: &Vars) -> Result<Option<u64>> {
    let Some(v) = vars.get("IRONTENSOR_MAX_BINDING")? else { return Ok(None) };
    match v.parse::<u64>() {
        Ok(b) if b >= 4096 && b % 256 == 0 => Ok(Some(b)),
        _ => Err(vars.bad("IRONTENSOR_MAX_BINDING", "a number of bytes, a multiple of 256 and at least 4096")),
    }
}

/// `IRONTENSOR_CACHE_DIR` (`off` or empty: none), else `$XDG_CACHE_HOME/irontensor`, else `~/.cache/irontensor`.
fn cache_dir(vars: &Vars) -> Result<Option<PathBuf>> {
    if let Some(v) = (vars.0)("IRONTENSOR_CACHE_DIR") {
        return Ok((!v.is_empty() && v != "off").then(|| PathBuf::from(v)));
    }
    let dir = |name: &str| (vars.0)(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(dir("XDG_CACHE_HOME").map(|d| d.join("irontensor")).or_else(|| dir("HOME").map(|h| h.join(".cache/irontensor"))))
}

fn dist(vars: &Vars) -> Result<DistSettings> {
    let force = match vars.get("IRONTENSOR_DIST")?.as_deref() {
        None => None,
        Some("on" | "1") => Some(true),
        Some("off" | "0") => Some(false),
        Some(_) => return Err(vars.bad("IRONTENSOR_DIST", "on or off")),
    };
    let launcher = if LAUNCHER_VARS.iter().any(|v| vars.is_set(v)) {
        Some(Launcher {
            open_mpi: vars.is_set("OMPI_COMM_WORLD_SIZE"),
            size: vars.index(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])?,
            rank: vars.index(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"])?,
            local_rank: vars.index(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"])?,
        })
    } else {
        None
    };
    let defaults = DistSettings::default();
    let crash = match vars.get("IRONTENSOR_DIST_CRASH")? {
        None => None,
        Some(spec) => {
            let parts: Vec<&str> = spec.split(':').collect();
            let hang = match parts.get(2) {
                None => Some(false),
                Some(&"hang") if parts.len() == 3 => Some(true),
                Some(_) => None,
            };
            match (parts.len() >= 2, parts[0].parse(), parts.get(1).map(|s| s.parse()), hang) {
                (true, Ok(rank), Some(Ok(step)), Some(hang)) => Some(CrashTest { rank, step, hang }),
                _ => return Err(vars.bad("IRONTENSOR_DIST_CRASH", "RANK:STEP or RANK:STEP:hang")),
            }
        }
    };
    Ok(DistSettings {
        force,
        launcher,
        mpi_lib: vars.get("IRONTENSOR_MPI_LIB")?,
        timeout: vars.positive("IRONTENSOR_DIST_TIMEOUT", "seconds")?.map_or(defaults.timeout, Duration::from_secs_f64),
        bucket_bytes: vars
            .positive("IRONTENSOR_DIST_BUCKET_MB", "MiB")?
            .map_or(defaults.bucket_bytes, |mb| (mb * (1 << 20) as f64) as usize),
        crash,
    })
}
