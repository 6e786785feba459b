//! The `irontensor` binary: `info`, and the environment variables it reads at start.

use std::process::Command;

fn irontensor(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_irontensor"));
    cmd.args(args).env_remove("IRONTENSOR_DEVICE").env_remove("IRONTENSOR_SYNC_GPU");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn info_reports_devices_and_settings() {
    let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "cpu")]);
    assert!(ok, "{out}");
    assert!(out.contains("default device: cpu"), "{out}");
    if std::env::var("IRONTENSOR_REQUIRE_GPU").as_deref() == Ok("1") {
        assert!(out.contains("first GPU result [2.0, 4.0, 6.0]"), "{out}");
        let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "gpu"), ("IRONTENSOR_SYNC_GPU", "1")]);
        assert!(ok && out.contains("default device: gpu"), "{out}");
        assert!(out.contains("(IRONTENSOR_SYNC_GPU): true"), "{out}");
    }
}

#[test]
fn a_bad_device_name_is_a_clear_error() {
    let (ok, out) = irontensor(&["info"], &[("IRONTENSOR_DEVICE", "tpu")]);
    assert!(!ok);
    assert!(out.contains("IRONTENSOR_DEVICE=tpu") && out.contains("cpu, gpu or auto"), "{out}");
}
