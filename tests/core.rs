//! Core: tensors, views, dtypes, devices, autograd mechanics, command batching and the pool.

mod common;
use common::{assert_close, f64s, rand_vec};
use irontensor::{ops, CommandBatch, Device, Precision, Tensor};

fn tensors(device: Device) {
    let z = Tensor::zeros_on(&[3, 5], Precision::FP32, device);
    assert_eq!((z.shape(), z.numel(), z.dtype(), z.device()), (&[3usize, 5][..], 15, Precision::FP32, device));
    assert!(z.to_vec().iter().all(|&v| v == 0.0));
    for dtype in [Precision::BF16, Precision::U32] {
        let z = Tensor::zeros_on(&[7], dtype, device);
        assert_eq!(z.to_vec(), vec![0.0; 7]);
    }
    let data = rand_vec(33, -1.0, 1.0, 1);
    let t = Tensor::from_f32_on(&data, &[3, 11], device).unwrap();
    assert_eq!(t.to_vec(), data);
    assert_eq!(t.as_f32_slice(), data);
    // view shares storage and reads the same values in a new shape.
    let v = t.view(&[33]).unwrap();
    assert!(v.shares_storage(&t));
    assert_eq!(v.shape(), &[33]);
    assert_eq!(v.to_vec(), data);
    // Seeded random: same numbers on every device and run, different seeds differ.
    let a = Tensor::randn_on(&[257], 1.0, 42, device).to_vec();
    assert_eq!(a, Tensor::randn_on(&[257], 1.0, 42, Device::Cpu).to_vec());
    assert_ne!(a, Tensor::randn_on(&[257], 1.0, 43, device).to_vec());
    let mean = a.iter().sum::<f32>() / 257.0;
    let var = a.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / 257.0;
    assert!(mean.abs() < 0.2 && (var - 1.0).abs() < 0.25, "randn mean {mean} var {var}");
    // Filled in parallel chunks, the values are those of one sequential stream.
    let big = Tensor::randn_on(&[3, 100_003], 0.5, 9, device).to_vec();
    let mut rng = irontensor::rng::Rng::new(9);
    assert!(big.iter().all(|&x| x == (rng.normal() * 0.5) as f32), "randn differs from the sequential stream");
    let u = Tensor::uniform_on(&[1000], -2.0, 3.0, 7, device).to_vec();
    assert!(u.iter().all(|&x| (-2.0..3.0).contains(&x)));
    // U32 token ids round-trip exactly, including values above 2^24.
    let ids = [0u32, 1, 31999, 16_777_217, u32::MAX];
    let t = Tensor::from_u32_on(&ids, &[5], device).unwrap();
    assert_eq!(t.to_vec_u32(), ids);
    // BF16 round trip: exact for values already representable.
    let exact: Vec<f32> = (0..65).map(|i| (i as f32 - 32.0) * 0.25).collect();
    let b = Tensor::from_f32_on(&exact, &[65], device).unwrap().to_bf16().unwrap();
    assert_eq!(b.dtype(), Precision::BF16);
    assert_eq!(b.to_vec(), exact);
    assert_eq!(b.to_f32().unwrap().to_vec(), exact);
    assert_eq!(Tensor::from_f32_on(&[2.5], &[], device).unwrap().item().unwrap(), 2.5);
}

fn devices_move(device: Device) {
    let data = rand_vec(70, -3.0, 3.0, 2);
    let t = Tensor::from_f32_on(&data, &[7, 10], Device::Cpu).unwrap();
    let g = t.to_device(device).unwrap();
    assert_eq!(g.device(), device);
    let back = g.to_device(Device::Cpu).unwrap();
    assert_eq!(back.to_vec(), data);
    let b = t.to_bf16().unwrap().to_device(device).unwrap();
    assert_eq!(b.dtype(), Precision::BF16);
    assert_eq!(b.to_device(Device::Cpu).unwrap().to_vec(), t.to_bf16().unwrap().to_vec());
    // to_device is differentiable: the gradient comes back to the source device.
    let x = t.requires_grad_();
    let g = ops::sum_all(&ops::mul(&x.to_device(device).unwrap(), &g).unwrap()).unwrap().backward().unwrap();
    let gx = g.get(&x).unwrap();
    assert_eq!((gx.device(), gx.to_vec()), (Device::Cpu, data.clone()));
    let ids = Tensor::from_u32_on(&[5, 6, 7], &[3], device).unwrap();
    assert_eq!(ids.to_device(Device::Cpu).unwrap().to_vec_u32(), vec![5, 6, 7]);
}

fn autograd(device: Device) {
    let xv = rand_vec(12, -1.0, 1.0, 3);
    let x = Tensor::from_f32_on(&xv, &[3, 4], device).unwrap().requires_grad_();
    // x used twice: gradients accumulate. L = Σ (x·x + 3x) -> dL/dx = 2x + 3.
    let y = ops::add(&ops::mul(&x, &x).unwrap(), &ops::scale(&x, 3.0).unwrap()).unwrap();
    let g = ops::sum_all(&y).unwrap().backward().unwrap();
    let want: Vec<f64> = xv.iter().map(|&v| 2.0 * v as f64 + 3.0).collect();
    assert_close(&g.get(&x).unwrap().to_vec(), &want, 1e-6, 1e-6, "accumulated gradient");
    // Gradients that meet add up in place only where nothing else holds them: add's backward
    // hands the same dy to both inputs, so a's sum must not land in b's gradient too.
    // L = Σ ((a + b) + a) -> dL/da = 2, dL/db = 1.
    let b = Tensor::from_f32_on(&xv, &[3, 4], device).unwrap().requires_grad_();
    let y = ops::add(&ops::add(&x, &b).unwrap(), &x).unwrap();
    let g = ops::sum_all(&y).unwrap().backward().unwrap();
    assert_eq!((g.get(&x).unwrap().to_vec(), g.get(&b).unwrap().to_vec()), (vec![2.0; 12], vec![1.0; 12]));
    // Through a view.
    let g =
        ops::sum_all(&ops::mul(&x.view(&[12]).unwrap(), &x.view(&[12]).unwrap()).unwrap()).unwrap().backward().unwrap();
    assert_close(
        &g.get(&x).unwrap().to_vec(),
        &xv.iter().map(|&v| 2.0 * v as f64).collect::<Vec<_>>(),
        1e-6,
        1e-6,
        "view gradient",
    );
    // A tensor that does not require grad gets none; detach cuts the graph.
    let c = Tensor::from_f32_on(&xv, &[3, 4], device).unwrap();
    let g = ops::sum_all(&ops::mul(&x, &c).unwrap()).unwrap().backward().unwrap();
    assert!(g.get(&c).is_none());
    assert_eq!(g.len(), 1);
    assert!(!ops::exp(&x.detach()).unwrap().tracks_grad());
    // no_grad records nothing.
    let y = irontensor::no_grad(|| ops::exp(&x).unwrap());
    assert!(!y.tracks_grad());
    assert!(ops::sum_all(&y).unwrap().backward().is_err());
    // backward needs a one-element output.
    let msg = ops::exp(&x).unwrap().backward().unwrap_err().to_string();
    assert!(msg.contains("backward") && msg.contains("[3, 4]"), "{msg}");
    // An op without a backward rule refuses inputs that need gradients.
    let msg = ops::sum_rows(&x).unwrap_err().to_string();
    assert!(msg.contains("sum_rows") && msg.contains("no backward"), "{msg}");
    assert!(irontensor::no_grad(|| ops::sum_rows(&x)).is_ok());
}

fn deep_graph(device: Device) {
    // 3000 chained ops: backward must not recurse per node.
    let x = Tensor::from_f32_on(&[0.5], &[1], device).unwrap().requires_grad_();
    let mut y = x.clone();
    for _ in 0..3000 {
        y = ops::scale(&y, 1.0).unwrap();
    }
    let g = ops::sum_all(&y).unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec(), vec![1.0]);
}

fn backward_hook(device: Device) {
    // `a` feeds the start of the graph and the end; `b` only the end; `c` needs no gradient.
    let t = |seed, grad: bool| {
        let v = Tensor::from_f32_on(&rand_vec(12, -1.0, 1.0, seed), &[3, 4], device).unwrap();
        if grad {
            v.requires_grad_()
        } else {
            v
        }
    };
    let (a, b, c) = (t(11, true), t(12, true), t(13, false));
    // Each backward pass frees its graph, so each gets its own forward.
    let forward = || {
        let deep = ops::mul(&ops::exp(&ops::mul(&a, &c).unwrap()).unwrap(), &b).unwrap();
        ops::add(&ops::sum_all(&deep).unwrap(), &ops::sum_all(&ops::mul(&a, &a).unwrap()).unwrap()).unwrap()
    };
    let plain = forward().backward().unwrap();
    let mut seen: Vec<(u64, Vec<f32>)> = Vec::new();
    let hooked = forward()
        .backward_with_hook(&mut |leaf, g| {
            seen.push((leaf.id(), g.to_vec()));
            Ok(())
        })
        .unwrap();
    // Each leaf once, with its whole (accumulated) gradient, as `backward` gives it.
    let mut ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    ids.sort();
    let mut want = vec![a.id(), b.id()];
    want.sort();
    assert_eq!(ids, want);
    for (leaf, g) in [(&a, &plain), (&b, &plain), (&a, &hooked), (&b, &hooked)] {
        let from_hook = &seen.iter().find(|(id, _)| *id == leaf.id()).unwrap().1;
        assert_eq!(from_hook, &g.get(leaf).unwrap().to_vec());
    }
    // An error from the hook ends the backward pass with that error.
    let err = forward().backward_with_hook(&mut |_, _| Err(irontensor::Error::Invalid("hook says no".into())));
    assert!(err.unwrap_err().to_string().contains("hook says no"));
}

/// A backward pass frees what the forward saved as it goes, even while the loss is alive; a
/// second pass over the same graph is an error that says what to do.
fn backward_frees_graph(device: Device) {
    // 16 MiB tensors: the live-byte count is process-wide, and other tests run alongside with
    // tensors of a few KiB, so the bounds below leave them 4 MiB.
    let n = 1 << 22;
    let size = 4 * n as i64;
    let x = Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, 3), &[n], device).unwrap().requires_grad_();
    let live = || device.memory().0 as i64;
    let before = live();
    // The two exp outputs stay for the backward (exp saves its output, mul its inputs).
    let loss = ops::sum_all(&ops::mul(&ops::exp(&ops::exp(&x).unwrap()).unwrap(), &x).unwrap()).unwrap();
    irontensor::bench::sync(device);
    let after_forward = live() - before;
    assert!(after_forward > 2 * size - size / 4, "forward kept {after_forward} bytes");
    let g = loss.backward().unwrap();
    irontensor::bench::sync(device);
    // Left: the gradient of x and the loss; kept activations would add two tensors more.
    let after_backward = live() - before;
    assert!(after_backward < size + size / 4, "after backward {after_backward} bytes live");
    assert!(g.get(&x).is_some());
    let msg = loss.backward().unwrap_err().to_string();
    assert!(msg.contains("already used") && msg.contains("forward again"), "{msg}");
}

device_tests!(tensors, devices_move, autograd, deep_graph, backward_hook, backward_frees_graph);

#[test]
fn command_batch() {
    let Some(gpu) = common::gpu() else { return };
    let data = rand_vec(1000, -1.0, 1.0, 5);
    let x = Tensor::from_f32_on(&data, &[1000], gpu).unwrap();
    let chain = |x: &Tensor| {
        let mut y = x.clone();
        for i in 0..300 {
            y = ops::add(&ops::scale(&y, 0.5).unwrap(), &ops::scale(x, i as f32 * 1e-3).unwrap()).unwrap();
        }
        y
    };
    let unbatched = chain(&x).to_vec();
    CommandBatch::begin();
    assert!(CommandBatch::is_active());
    let y = chain(&x);
    CommandBatch::sync();
    let batched = y.to_vec();
    let z = chain(&x);
    CommandBatch::commit_async();
    CommandBatch::wait_for_completion();
    CommandBatch::end();
    assert!(!CommandBatch::is_active());
    assert_eq!(batched, unbatched);
    assert_eq!(z.to_vec(), unbatched);
    // The same chain on the CPU agrees.
    let cpu = chain(&Tensor::from_f32_on(&data, &[1000], Device::Cpu).unwrap()).to_vec();
    assert_close(&batched, &f64s(&cpu), 1e-6, 1e-6, "batched gpu vs cpu");
}

#[test]
fn cpu_memory_is_counted() {
    let (before, _) = Device::Cpu.memory();
    let t = Tensor::zeros_on(&[1000, 100], Precision::FP32, Device::Cpu);
    let (during, peak) = Device::Cpu.memory();
    assert!(during >= before + 400_000 && peak >= during);
    drop(t);
    assert!(Device::Cpu.memory().0 < during);
}

#[test]
fn default_device_follows_the_environment() {
    // IRONTENSOR_DEVICE is read once per process; whatever it is, the choice must be usable.
    let d = Device::default_device();
    let t = Tensor::zeros(&[2], Precision::FP32);
    assert_eq!(t.device(), d);
    assert!(Device::parse("tpu").unwrap_err().to_string().contains("cpu, gpu or auto"));
}
