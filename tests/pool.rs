//! The GPU buffer pool: a repeated step allocates nothing new. Its own test binary, so no
//! other test shares the pool while it counts.

mod common;
use irontensor::{ops, Tensor};

#[test]
fn pool_reuses_buffers() {
    let Some(gpu) = common::gpu() else { return };
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
