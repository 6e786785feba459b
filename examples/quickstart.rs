//! The README's first example: `cargo run --example quickstart`.

use irontensor::{matmul, silu, sum_all, CommandBatch, Device, Precision, Tensor};

fn main() -> irontensor::Result<()> {
    let a = Tensor::randn(&[64, 128], 0.02, 1).requires_grad_(); // default device
    let b = Tensor::from_f32_slice(&vec![0.5; 128 * 32], &[128, 32])?;
    let y = silu(&matmul(&a, &b)?)?; // queued on the GPU, not yet run
    let loss = sum_all(&y)?;
    let grads = loss.backward()?; // reverse-mode autograd
    println!("loss {} dA[0] {}", loss.item()?, grads.get(&a).unwrap().to_vec()[0]);
    let half = a.to_bf16()?; // BF16 storage, round to nearest even
    let flat = a.view(&[64 * 128])?; // zero-copy: shares a's buffer
    let zeros = Tensor::zeros(&[4, 4], Precision::FP32);
    let on_cpu = half.to_device(Device::Cpu)?;
    println!("{flat:?} {zeros:?} {on_cpu:?} on {:?}", a.device());

    CommandBatch::begin(); // record into large command buffers
    let y = silu(&matmul(&a, &b)?)?;
    CommandBatch::commit_async(); // submit, return at once
    CommandBatch::wait_for_completion();
    CommandBatch::end();
    println!("mean {}", irontensor::mean_all(&y)?.item()?);
    Ok(())
}
