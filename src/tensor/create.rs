//! Tensor constructors: zeros, constants, host data, and seeded random values.

use super::{numel, Tensor};
use crate::device::{gpu, CpuBuffer, Device};
use crate::rng::Rng;
use crate::{bail, Precision, Result};
use half::bf16;
use rayon::prelude::*;

impl Tensor {
    /// Zeros on the default device (`IRONTENSOR_DEVICE`).
    pub fn zeros(shape: &[usize], dtype: Precision) -> Tensor {
        Tensor::zeros_on(shape, dtype, Device::default_device())
    }

    pub fn zeros_on(shape: &[usize], dtype: Precision, device: Device) -> Tensor {
        let n = numel(shape);
        match device {
            Device::Cpu => Tensor::from_cpu(
                match dtype {
                    Precision::FP32 => CpuBuffer::F32(vec![0.0; n]),
                    Precision::BF16 => CpuBuffer::BF16(vec![bf16::ZERO; n]),
                    Precision::U32 => CpuBuffer::U32(vec![0; n]),
                },
                shape,
            ),
            Device::Gpu => {
                let ctx = gpu::context().expect("Tensor::zeros_on(Gpu)");
                Tensor::from_gpu(ctx.zeros((n * dtype.size_bytes()) as u64), shape, dtype)
            }
        }
    }

    /// An f32 tensor filled with `value`.
    pub fn full_on(shape: &[usize], value: f32, device: Device) -> Tensor {
        Tensor::from_f32_on(&vec![value; numel(shape)], shape, device).expect("full: sizes agree")
    }

    /// Copies `data` into a new f32 tensor on the default device.
    pub fn from_f32_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_f32_on(data, shape, Device::default_device())
    }

    pub fn from_f32_on(data: &[f32], shape: &[usize], device: Device) -> Result<Tensor> {
        if data.len() != numel(shape) {
            bail!(
                Shape,
                "from_f32_slice: {} values cannot fill shape {shape:?} ({} elements)",
                data.len(),
                numel(shape)
            );
        }
        Ok(match device {
            Device::Cpu => Tensor::cpu_f32(data.to_vec(), shape),
            Device::Gpu => {
                let ctx = gpu::context()?;
                Tensor::from_gpu(ctx.upload(bytemuck::cast_slice(data)), shape, Precision::FP32)
            }
        })
    }

    /// Token ids and other integers.
    pub fn from_u32_slice(data: &[u32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_u32_on(data, shape, Device::default_device())
    }

    pub fn from_u32_on(data: &[u32], shape: &[usize], device: Device) -> Result<Tensor> {
        if data.len() != numel(shape) {
            bail!(
                Shape,
                "from_u32_slice: {} values cannot fill shape {shape:?} ({} elements)",
                data.len(),
                numel(shape)
            );
        }
        Ok(match device {
            Device::Cpu => Tensor::from_cpu(CpuBuffer::U32(data.to_vec()), shape),
            Device::Gpu => Tensor::from_gpu(gpu::context()?.upload_u32(data), shape, Precision::U32),
        })
    }

    /// Normal(0, std²) values from `seed`; the same numbers on every device.
    pub fn randn_on(shape: &[usize], std: f32, seed: u64, device: Device) -> Tensor {
        // Each value takes two numbers of the stream: chunks fill in parallel with the values
        // a sequential loop would give (model init is most of a run's start-up on the CPU).
        const CHUNK: usize = 1 << 16;
        let rng = Rng::new(seed);
        let mut data = vec![0f32; numel(shape)];
        data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            let mut rng = rng.skip(2 * (c * CHUNK) as u64);
            chunk.iter_mut().for_each(|x| *x = (rng.normal() * std as f64) as f32);
        });
        if device == Device::Cpu {
            return Tensor::cpu_f32(data, shape);
        }
        Tensor::from_f32_on(&data, shape, device).expect("randn: sizes agree")
    }

    pub fn randn(shape: &[usize], std: f32, seed: u64) -> Tensor {
        Tensor::randn_on(shape, std, seed, Device::default_device())
    }

    /// Uniform values in [lo, hi) from `seed`.
    pub fn uniform_on(shape: &[usize], lo: f32, hi: f32, seed: u64, device: Device) -> Tensor {
        let mut rng = Rng::new(seed);
        let data: Vec<f32> = (0..numel(shape)).map(|_| lo + (hi - lo) * rng.uniform() as f32).collect();
        Tensor::from_f32_on(&data, shape, device).expect("uniform: sizes agree")
    }

    pub fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
        Tensor::uniform_on(shape, lo, hi, seed, Device::default_device())
    }
}
