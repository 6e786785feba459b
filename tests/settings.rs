//! `Settings`: each variable parsed, bad values named with what they may be, the defaults, and
//! that the library reads no variable itself (only `Settings::from_env` does).

use irontensor::device::gpu;
use irontensor::settings::{CrashTest, DeviceChoice, DistSettings, Launcher, PrecisionChoice};
use irontensor::{ops, profile, Device, MatmulPrecision, Settings};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Settings from exactly these variables.
fn from(vars: &[(&str, &str)]) -> irontensor::Result<Settings> {
    let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
    Settings::from_vars(|name| map.get(name).cloned())
}

#[test]
fn nothing_set_gives_the_defaults() {
    let s = from(&[]).unwrap();
    assert_eq!(s, Settings::default());
    assert_eq!(s.device, DeviceChoice::Auto);
    assert!(!s.bf16 && !s.profile && s.precision == PrecisionChoice::Auto && !s.gpu.sync_every_op);
    assert_eq!(s.gpu.cache_dir, None, "no HOME: no pipeline cache");
    assert_eq!(s.dist.timeout, Duration::from_secs(600));
    assert_eq!(s.dist.bucket_bytes, 4 << 20);
    assert!(!s.dist.enabled());
    // An empty value counts as unset.
    assert_eq!(from(&[("IRONTENSOR_DEVICE", ""), ("IRONTENSOR_BF16", "")]).unwrap(), Settings::default());
}

#[test]
fn each_variable_is_parsed() {
    let s = from(&[
        ("IRONTENSOR_DEVICE", "GPU"),
        ("IRONTENSOR_SYNC_GPU", "1"),
        ("IRONTENSOR_KERNEL_DIR", "kernels/dev"),
        ("IRONTENSOR_BF16", "1"),
        ("IRONTENSOR_PROFILE", "1"),
        ("IRONTENSOR_MATMUL", "coop"),
        ("IRONTENSOR_CACHE_DIR", "/tmp/pipelines"),
        ("IRONTENSOR_MAX_BINDING", "65536"),
        ("IRONTENSOR_GPU_MEMORY", "1.5"),
        ("IRONTENSOR_DIST", "off"),
        ("IRONTENSOR_MPI_LIB", "libmpich.so.12"),
        ("IRONTENSOR_DIST_TIMEOUT", "2.5"),
        ("IRONTENSOR_DIST_BUCKET_MB", "0.004"),
        ("IRONTENSOR_DIST_CRASH", "1:7:hang"),
    ])
    .unwrap();
    assert_eq!(s.device, DeviceChoice::Gpu);
    assert!(s.gpu.sync_every_op && s.bf16 && s.profile && s.precision == PrecisionChoice::Mixed);
    assert_eq!(s.gpu.kernel_dir, Some(PathBuf::from("kernels/dev")));
    assert_eq!(s.gpu.cache_dir, Some(PathBuf::from("/tmp/pipelines")));
    assert_eq!((s.gpu.max_binding, s.gpu.memory), (Some(65536), Some(3 << 29)));
    let want = DistSettings {
        force: Some(false),
        launcher: None,
        mpi_lib: Some("libmpich.so.12".into()),
        timeout: Duration::from_millis(2500),
        bucket_bytes: (0.004 * (1 << 20) as f64) as usize,
        crash: Some(CrashTest { rank: 1, step: 7, hang: true }),
    };
    assert_eq!(s.dist, want);
    assert!(!s.dist.enabled());

    let s =
        from(&[("IRONTENSOR_DEVICE", "cpu"), ("IRONTENSOR_MATMUL", "fp32"), ("IRONTENSOR_DIST_CRASH", "0:3")]).unwrap();
    assert_eq!(s.device, DeviceChoice::Cpu);
    assert_eq!(s.precision, PrecisionChoice::Fp32);
    assert_eq!(s.dist.crash, Some(CrashTest { rank: 0, step: 3, hang: false }));
    assert!(from(&[("IRONTENSOR_DIST", "on")]).unwrap().dist.enabled());
    assert_eq!(from(&[("IRONTENSOR_MATMUL", "f16")]).unwrap().precision, PrecisionChoice::Mixed);
}

#[test]
fn the_cache_directory_falls_back_to_xdg_then_home_and_turns_off() {
    let dir = |vars: &[(&str, &str)]| from(vars).unwrap().gpu.cache_dir;
    let home = [("HOME", "/home/a")];
    assert_eq!(dir(&home), Some(PathBuf::from("/home/a/.cache/irontensor")));
    assert_eq!(dir(&[home[0], ("XDG_CACHE_HOME", "/c")]), Some(PathBuf::from("/c/irontensor")));
    assert_eq!(dir(&[home[0], ("IRONTENSOR_CACHE_DIR", "off")]), None);
    assert_eq!(dir(&[home[0], ("IRONTENSOR_CACHE_DIR", "")]), None);
}

#[test]
fn the_launchers_variables_give_size_rank_and_local_rank() {
    let s = from(&[("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1")])
        .unwrap();
    assert_eq!(s.dist.launcher, Some(Launcher { open_mpi: true, size: Some(4), rank: Some(3), local_rank: Some(1) }));
    assert!(s.dist.enabled());
    let s = from(&[("PMI_SIZE", "2"), ("PMI_RANK", "1"), ("MPI_LOCALRANKID", "0")]).unwrap();
    assert_eq!(s.dist.launcher, Some(Launcher { open_mpi: false, size: Some(2), rank: Some(1), local_rank: Some(0) }));
    let s = from(&[("PMIX_RANK", "5")]).unwrap();
    assert_eq!(s.dist.launcher, Some(Launcher { open_mpi: false, size: None, rank: Some(5), local_rank: None }));
    // Launched, but IRONTENSOR_DIST=off runs each process on its own.
    assert!(!from(&[("PMIX_RANK", "5"), ("IRONTENSOR_DIST", "0")]).unwrap().dist.enabled());
    // The GPU context learns the local rank (a rank's GPU on a machine of several) and IRONTENSOR_GPU.
    let s =
        from(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_COMM_WORLD_LOCAL_RANK", "1"), ("IRONTENSOR_GPU", "3")]).unwrap();
    assert_eq!((s.gpu.local_rank, s.gpu.index), (Some(1), Some(3)));
    assert_eq!((from(&[]).unwrap().gpu.local_rank, from(&[]).unwrap().gpu.index), (None, None));
}

#[test]
fn a_bad_value_names_the_variable_and_what_it_may_be() {
    let cases = [
        ("IRONTENSOR_DEVICE", "tpu", "cpu, gpu or auto"),
        ("IRONTENSOR_SYNC_GPU", "yes", "1 (on) or 0 (off)"),
        ("IRONTENSOR_BF16", "true", "1 (on) or 0 (off)"),
        ("IRONTENSOR_PROFILE", "2", "1 (on) or 0 (off)"),
        ("IRONTENSOR_MATMUL", "tf32", "coop (or f16) or fp32"),
        ("IRONTENSOR_DIST", "maybe", "on or off"),
        ("IRONTENSOR_MAX_BINDING", "1000", "a multiple of 256 and at least 4096"),
        ("IRONTENSOR_MAX_BINDING", "2G", "a number of bytes"),
        ("IRONTENSOR_GPU_MEMORY", "0", "a positive number of GiB"),
        ("IRONTENSOR_GPU", "first", "an adapter's index in `irontensor info`"),
        ("IRONTENSOR_DIST_TIMEOUT", "-3", "a positive number of seconds"),
        ("IRONTENSOR_DIST_TIMEOUT", "soon", "a positive number of seconds"),
        ("IRONTENSOR_DIST_BUCKET_MB", "0", "a positive number of MiB"),
        ("IRONTENSOR_DIST_CRASH", "1", "RANK:STEP or RANK:STEP:hang"),
        ("IRONTENSOR_DIST_CRASH", "1:2:explode", "RANK:STEP or RANK:STEP:hang"),
        ("IRONTENSOR_DIST_CRASH", "a:2", "RANK:STEP or RANK:STEP:hang"),
        ("OMPI_COMM_WORLD_SIZE", "four", "a whole number"),
        ("MPI_LOCALRANKID", "-1", "a whole number"),
    ];
    for (name, value, allowed) in cases {
        let mut vars = vec![(name, value)];
        if name == "MPI_LOCALRANKID" {
            vars.push(("PMI_SIZE", "2"));
        }
        let e = from(&vars).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(&format!("{name}={value}")) && e.contains(allowed), "{name}={value}: {e}");
    }
}

/// The library reads no variable behind the caller's back: set in this process, they change
/// nothing until `configure` is given settings. (The only test here that touches the environment
/// or the process-wide state.)
#[test]
fn the_library_ignores_the_environment_until_configured() {
    std::env::set_var("IRONTENSOR_MATMUL", "coop");
    std::env::set_var("IRONTENSOR_PROFILE", "1");
    std::env::set_var("IRONTENSOR_DEVICE", "tpu"); // read by the library, this would be an error
    assert_eq!(ops::matmul_precision(), MatmulPrecision::FP32);
    assert!(!profile::is_enabled());
    let d = Device::default_device();
    // auto: the GPU context starts only for a hardware adapter (lavapipe would cost start-up for nothing).
    if !gpu::hardware_present() {
        assert_eq!(d, Device::Cpu);
        assert!(gpu::started().is_none(), "auto created a device on a software adapter");
    }
    // Now configured: the profiler follows its setting; the default device, chosen, stays.
    let settings = Settings { profile: true, ..Settings::default() };
    irontensor::configure(&settings).unwrap();
    assert!(profile::is_enabled());
    let other = if d == Device::Cpu { DeviceChoice::Gpu } else { DeviceChoice::Cpu };
    let e = irontensor::configure(&Settings { device: other, ..settings }).unwrap_err().to_string();
    assert!(e.contains("already chosen"), "{e}");
}
