//! The GPU buffer pool: a repeated step allocates nothing new. Its own test binary, so no
//! other test shares the pool while it counts.

mod common;
use irontensor::{ops, Tensor};

#[test]
fn pool_reuses_buffers() {
    let Some(gpu) = common::gpu() else { return };
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = irontensor::device::gpu::context().unwrap();
    let w = Tensor::randn_on(&[64, 64], 0.1, 1, gpu).requires_grad_();
    let x = Tensor::randn_on(&[33, 64], 1.0, 2, gpu);
    let step = || {
        let y = ops::silu(&ops::matmul(&x, &w).unwrap()).unwrap();
        let g = ops::mean_all(&y).unwrap().backward().unwrap();
        g.get(&w).unwrap().to_vec();
    };
    step();
    step();
    let held = ctx.pool_bytes();
    for _ in 0..5 {
        step();
    }
    assert_eq!(ctx.pool_bytes(), held, "a repeated step must allocate no new GPU buffer");
}

/// The pool tests count process-wide totals: one at a time.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn buffers_freed_inside_a_batch_are_reused_by_later_ops() {
    let Some(gpu) = common::gpu() else { return };
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut x = Tensor::randn_on(&[1000, 257], 1.0, 3, gpu);
    let bytes = (1000 * 257 * 4) as u64;
    irontensor::CommandBatch::begin();
    gpu.reset_peak_memory();
    let (live, _) = gpu.memory();
    let mut want: Vec<f64> = x.to_vec().iter().map(|&v| v as f64).collect();
    for k in 0..40 {
        let s = 1.0 + k as f32 / 64.0;
        x = ops::scale(&x, s).unwrap(); // the old x is dropped while its dispatch is queued
        want.iter_mut().for_each(|v| *v *= s as f64);
    }
    let peak = gpu.memory().1 - live;
    irontensor::CommandBatch::end();
    common::assert_close(&x.to_vec(), &want, 1e-6, 1e-5, "40 chained scales in one batch");
    assert!(peak <= 3 * bytes, "peak {peak} bytes over 40 ops of {bytes} bytes: freed buffers were not reused");
}

#[test]
fn an_upload_never_overwrites_a_buffer_queued_work_reads() {
    let Some(gpu) = common::gpu() else { return };
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let n = 4099;
    let (va, vb) = (common::rand_vec(n, -1.0, 1.0, 5), common::rand_vec(n, -1.0, 1.0, 6));
    irontensor::CommandBatch::begin();
    let a = Tensor::from_f32_on(&va, &[n], gpu).unwrap();
    let y = ops::scale(&a, 2.0).unwrap(); // queued, reads a
    drop(a);
    let b = Tensor::from_f32_on(&vb, &[n], gpu).unwrap(); // same size: must not take a's buffer
    irontensor::CommandBatch::end();
    let want: Vec<f64> = va.iter().map(|&v| 2.0 * v as f64).collect();
    common::assert_close(&y.to_vec(), &want, 0.0, 0.0, "2a after a was dropped and b uploaded");
    common::assert_close(&b.to_vec(), &common::f64s(&vb), 0.0, 0.0, "b");
}
