//! The profiler: op entries and counts on CPU and GPU, GPU timestamps, phases, steps, the
//! report, a profiled training step, and that nothing is recorded when it is off.
//! The profiler is process-global: these tests live in their own binary and hold `LOCK`.

mod common;
use irontensor::nn::ModelConfig;
use irontensor::profile::{self, OpStat, Phase};
use irontensor::train::{Trainer, TrainingConfig};
use irontensor::{ops, Device, Precision, Tensor};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises the tests and starts each from an empty profile, on or off.
fn start(on: bool) -> MutexGuard<'static, ()> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if on {
        profile::enable();
    } else {
        profile::disable();
    }
    profile::reset();
    guard
}

fn entry(name: &str, device: Device) -> Option<OpStat> {
    profile::ops().into_iter().find(|o| o.name == name && o.device == device)
}

fn rand(shape: &[usize], seed: u64, device: Device) -> Tensor {
    Tensor::randn_on(shape, 1.0, seed, device)
}

#[test]
fn cpu_ops_are_named_counted_and_timed() {
    let _g = start(true);
    let (a, b) = (rand(&[33, 65], 1, Device::Cpu), rand(&[65, 7], 2, Device::Cpu));
    for _ in 0..2 {
        ops::matmul(&a, &b).unwrap();
    }
    for _ in 0..3 {
        ops::add(&a, &a).unwrap();
    }
    ops::softmax(&a).unwrap();
    let mm = entry("matmul", Device::Cpu).expect("a matmul entry");
    assert_eq!((mm.count, mm.dispatches), (2, 0));
    assert!(mm.total > Duration::ZERO, "CPU matmul time should be measured");
    assert_eq!(entry("add", Device::Cpu).expect("an add entry").count, 3);
    assert_eq!(entry("softmax", Device::Cpu).expect("a softmax entry").count, 1);
    assert!(entry("matmul", Device::Gpu).is_none(), "nothing ran on the GPU");
}

#[test]
fn backward_kernels_have_their_own_names() {
    let _g = start(true);
    let x = rand(&[7, 33], 3, Device::Cpu).requires_grad_();
    let gamma = rand(&[33], 4, Device::Cpu).requires_grad_();
    let loss = ops::sum_all(&ops::rmsnorm(&x, &gamma, 1e-5).unwrap()).unwrap();
    loss.backward().unwrap();
    assert_eq!(entry("rmsnorm", Device::Cpu).expect("rmsnorm").count, 1);
    assert_eq!(entry("rmsnorm_backward", Device::Cpu).expect("rmsnorm_backward").count, 1);
    assert!(entry("sum_all_backward", Device::Cpu).is_some(), "the loss's backward is recorded too");
}

#[test]
fn gpu_ops_are_named_counted_and_timed() {
    let Some(gpu) = common::gpu() else { return };
    let _g = start(true);
    let (a, b) = (rand(&[33, 65], 5, gpu), rand(&[65, 7], 6, gpu));
    let mut out = Vec::new();
    for _ in 0..2 {
        out.push(ops::matmul(&a, &b).unwrap());
    }
    out.push(ops::softmax(&a).unwrap());
    out.push(ops::silu(&a).unwrap());
    for t in &out {
        t.to_vec(); // the work completes before the profile is read
    }
    let ops_seen: Vec<_> = profile::ops().into_iter().filter(|o| o.device == Device::Gpu).collect();
    let mm = entry("matmul", Device::Gpu).expect("a GPU matmul entry");
    assert_eq!((mm.count, mm.dispatches), (2, 2), "{ops_seen:?}");
    for name in ["softmax", "silu"] {
        let e = entry(name, Device::Gpu).unwrap_or_else(|| panic!("a GPU {name} entry in {ops_seen:?}"));
        assert_eq!((e.count, e.dispatches), (1, 1), "{name}");
    }
    assert!(entry("other", Device::Gpu).is_none(), "every dispatch belongs to an op: {ops_seen:?}");
    let timed = profile::gpu_timestamps() == Some(true);
    let ctx = irontensor::device::gpu::context().unwrap();
    eprintln!("GPU {}: timestamp queries {}", ctx.info.name, if timed { "used" } else { "unavailable" });
    if ctx.info.name.contains("llvmpipe") {
        assert!(timed, "lavapipe has TIMESTAMP_QUERY: GPU times should be measured");
    }
    for e in &ops_seen {
        if timed {
            assert!(e.total > Duration::ZERO, "GPU time of {} should be measured: {e:?}", e.name);
        } else {
            assert_eq!(e.total, Duration::ZERO, "{e:?}");
        }
    }
    // A second round adds to the same entries.
    ops::matmul(&a, &b).unwrap().to_vec();
    let again = entry("matmul", Device::Gpu).unwrap();
    assert_eq!(again.count, 3);
    assert!(!timed || again.total > mm.total);
}

#[test]
fn phases_steps_and_report() {
    let _g = start(true);
    for _ in 0..2 {
        {
            let _p = profile::phase(Phase::Forward);
            std::thread::sleep(Duration::from_millis(6));
        }
        {
            let _p = profile::phase(Phase::Backward);
            std::thread::sleep(Duration::from_millis(3));
        }
        let _p = profile::phase(Phase::Optimizer);
        profile::step();
    }
    ops::matmul(&rand(&[7, 33], 7, Device::Cpu), &rand(&[33, 1], 8, Device::Cpu)).unwrap();
    assert_eq!(profile::steps(), 2);
    let (fwd, bwd) = (profile::phase_time(Phase::Forward), profile::phase_time(Phase::Backward));
    assert!(fwd >= Duration::from_millis(12), "forward {fwd:?}");
    assert!(bwd >= Duration::from_millis(6) && bwd < fwd, "backward {bwd:?}, forward {fwd:?}");
    let r = profile::report();
    for want in [
        "IronTensor Profiling Report",
        "Total Time: ",
        "| Steps: 2 | Avg Step: ",
        "Phase Breakdown",
        "  Forward Pass:",
        "  Backward Pass:",
        "  Optimizer:",
        "Top Operations by Time:",
        "  Rank | Operation           | Total    | Count | Avg     | % Total",
        "    1  | matmul              |",
    ] {
        assert!(r.contains(want), "report lacks {want:?}:\n{r}");
    }
    let forward_line = r.lines().find(|l| l.contains("Forward Pass:")).unwrap();
    assert!(forward_line.contains('%') && !forward_line.contains("(0.0%)"), "{forward_line}");
}

#[test]
fn a_training_step_fills_every_phase() {
    let _g = start(true);
    let cfg = ModelConfig {
        vocab_size: 64,
        hidden_dim: 32,
        num_layers: 1,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 64,
        max_seq_len: 16,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    };
    let mut t = Trainer::new_on(cfg, TrainingConfig::default(), Device::Cpu).unwrap();
    let x: Vec<u32> = (0..32).map(|i| (i * 7 % 64) as u32).collect();
    let y: Vec<u32> = (0..32).map(|i| (i * 11 % 64) as u32).collect();
    t.train_step(&x, &y, 2, 16).unwrap();
    assert_eq!(profile::steps(), 1);
    for p in [Phase::Forward, Phase::Backward, Phase::Optimizer] {
        assert!(profile::phase_time(p) > Duration::ZERO, "{p:?} was not timed");
    }
    let names: Vec<_> = profile::ops().into_iter().map(|o| o.name).collect();
    for want in ["matmul", "rmsnorm_backward", "embedding", "step_control"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
}

#[test]
fn nothing_is_recorded_when_off() {
    let _g = start(false);
    assert!(!profile::is_enabled());
    let a = rand(&[7, 33], 9, Device::Cpu);
    ops::matmul(&a, &ops::transpose(&a).unwrap()).unwrap();
    if let Some(gpu) = common::gpu() {
        let g = rand(&[7, 33], 10, gpu);
        ops::exp(&g).unwrap().to_vec();
    }
    {
        let _p = profile::phase(Phase::Forward);
        std::thread::sleep(Duration::from_millis(2));
    }
    profile::step();
    assert!(profile::ops().is_empty(), "{:?}", profile::ops());
    assert_eq!(profile::steps(), 0);
    assert_eq!(profile::phase_time(Phase::Forward), Duration::ZERO);
    assert!(profile::report().contains("Steps: 0"));
}
