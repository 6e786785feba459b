//! Tensor: shared storage + element offset + shape + dtype, row-major and contiguous.

mod access;
mod create;

pub(crate) use access::{CpuRead, CpuWrite};

use crate::autograd::GradFn;
use crate::device::{gpu, CpuBuffer, Device, GpuBuffer, Storage};
use crate::precision::{bf16_bits_to_f32, f32_to_bf16_bits};
use crate::{bail, Precision, Result};
use half::bf16;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A cheap handle: clones share storage and identity.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub id: u64,
    pub storage: Storage,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub dtype: Precision,
    pub requires_grad: bool,
    /// The op that made this tensor, and which of its outputs this is.
    pub grad_fn: Option<(Arc<GradFn>, usize)>,
}

fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    pub(crate) fn from_storage(storage: Storage, offset: usize, shape: &[usize], dtype: Precision) -> Tensor {
        Tensor(Arc::new(Inner {
            id: next_id(),
            storage,
            offset,
            shape: shape.to_vec(),
            dtype,
            requires_grad: false,
            grad_fn: None,
        }))
    }

    pub(crate) fn from_cpu(buf: CpuBuffer, shape: &[usize]) -> Tensor {
        debug_assert_eq!(buf.len(), numel(shape));
        let dtype = match buf {
            CpuBuffer::F32(_) => Precision::FP32,
            CpuBuffer::BF16(_) => Precision::BF16,
            CpuBuffer::U32(_) => Precision::U32,
        };
        Tensor::from_storage(Storage::Cpu(Arc::new(RwLock::new(buf.tracked()))), 0, shape, dtype)
    }

    pub(crate) fn from_gpu(buf: GpuBuffer, shape: &[usize], dtype: Precision) -> Tensor {
        Tensor::from_storage(Storage::Gpu(Arc::new(buf)), 0, shape, dtype)
    }

    /// An f32 tensor on the CPU (ops' CPU kernels build their outputs with this).
    pub(crate) fn cpu_f32(data: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor::from_cpu(CpuBuffer::F32(data), shape)
    }

    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }

    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }

    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }

    pub fn dtype(&self) -> Precision {
        self.0.dtype
    }

    pub fn device(&self) -> Device {
        self.0.storage.device()
    }

    /// Identity used by autograd (`Gradients::get`).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub(crate) fn offset(&self) -> usize {
        self.0.offset
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.0.storage
    }

    /// Whether both tensors point into the same memory (views of one another).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        self.storage().same_as(other.storage())
    }

    /// Same storage, new shape (zero-copy). Differentiable.
    pub fn view(&self, shape: &[usize]) -> Result<Tensor> {
        if numel(shape) != self.numel() {
            bail!(
                Shape,
                "view: cannot view {:?} ({} elements) as {shape:?} ({} elements)",
                self.shape(),
                self.numel(),
                numel(shape)
            );
        }
        let out = Tensor::from_storage(self.0.storage.clone(), self.0.offset, shape, self.0.dtype);
        let in_shape = self.shape().to_vec();
        Ok(crate::autograd::record("view", out, &[self], move |dy| Ok(vec![Some(dy.view(&in_shape)?)])))
    }

    /// Alias of `view`: tensors are always contiguous, so a reshape never copies.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        self.view(shape)
    }

    /// A handle to the same data that autograd treats as a leaf needing a gradient.
    pub fn requires_grad_(&self) -> Tensor {
        let i = &self.0;
        Tensor(Arc::new(Inner {
            id: next_id(),
            storage: i.storage.clone(),
            offset: i.offset,
            shape: i.shape.clone(),
            dtype: i.dtype,
            requires_grad: true,
            grad_fn: None,
        }))
    }

    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// The same data, cut from the autograd graph.
    pub fn detach(&self) -> Tensor {
        let i = &self.0;
        Tensor::from_storage(i.storage.clone(), i.offset, &i.shape, i.dtype)
    }

    /// Values as f32 (BF16 widened, U32 converted). Flushes queued GPU work.
    pub fn to_vec(&self) -> Vec<f32> {
        match self.dtype() {
            Precision::FP32 => bytemuck::cast_slice(&self.raw_bytes()).to_vec(),
            Precision::BF16 => {
                self.raw_bytes().chunks_exact(2).map(|b| bf16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect()
            }
            Precision::U32 => self.to_vec_u32().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// `to_vec` under the name `as_f32_slice` (kept for code written against the original API).
    pub fn as_f32_slice(&self) -> Vec<f32> {
        self.to_vec()
    }

    pub fn to_vec_u32(&self) -> Vec<u32> {
        // Ids uploaded from the host are answered from the host copy: no GPU round trip.
        if let Storage::Gpu(buf) = self.storage() {
            if let (Precision::U32, Some(host)) = (self.dtype(), &buf.host_u32) {
                return host[self.offset()..self.offset() + self.numel()].to_vec();
            }
        }
        match self.dtype() {
            Precision::U32 => bytemuck::pod_collect_to_vec(&self.raw_bytes()),
            _ => self.to_vec().into_iter().map(|v| v as u32).collect(),
        }
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            bail!(Shape, "item: tensor of shape {:?} has {} elements, expected 1", self.shape(), self.numel());
        }
        Ok(self.to_vec()[0])
    }

    /// The view's bytes, little-endian, as stored.
    pub(crate) fn raw_bytes(&self) -> Vec<u8> {
        let size = self.dtype().size_bytes();
        match self.storage() {
            Storage::Cpu(_) => {
                let r = self.cpu();
                match &*r.guard {
                    CpuBuffer::F32(v) => bytemuck::cast_slice(&v[r.range()]).to_vec(),
                    CpuBuffer::U32(v) => bytemuck::cast_slice(&v[r.range()]).to_vec(),
                    CpuBuffer::BF16(v) => v[r.range()].iter().flat_map(|h| h.to_bits().to_le_bytes()).collect(),
                }
            }
            Storage::Gpu(buf) => {
                let ctx = gpu::context().expect("GPU tensor without a GPU context");
                ctx.read(buf, (self.offset() * size) as u64, (self.numel() * size) as u64)
            }
        }
    }

    /// A tensor from little-endian `bytes` of `dtype` (checkpoints).
    pub(crate) fn from_bytes(bytes: &[u8], shape: &[usize], dtype: Precision, device: Device) -> Result<Tensor> {
        if bytes.len() != numel(shape) * dtype.size_bytes() {
            bail!(Shape, "from_bytes: {} bytes cannot hold {shape:?} of {}", bytes.len(), dtype.name());
        }
        Ok(match device {
            Device::Gpu if dtype == Precision::U32 => {
                Tensor::from_gpu(gpu::context()?.upload_u32(&bytemuck::pod_collect_to_vec(bytes)), shape, dtype)
            }
            Device::Gpu => Tensor::from_gpu(gpu::context()?.upload(bytes), shape, dtype),
            Device::Cpu => Tensor::from_cpu(
                match dtype {
                    Precision::FP32 => CpuBuffer::F32(bytemuck::pod_collect_to_vec(bytes)),
                    Precision::U32 => CpuBuffer::U32(bytemuck::pod_collect_to_vec(bytes)),
                    Precision::BF16 => CpuBuffer::BF16(
                        bytes.chunks_exact(2).map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))).collect(),
                    ),
                },
                shape,
            ),
        })
    }

    /// A copy on `device` (the same tensor if it is already there). Differentiable.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        let from = self.device();
        if device == from {
            return Ok(self.clone());
        }
        let out = Tensor::from_bytes(&self.raw_bytes(), self.shape(), self.dtype(), device)?;
        Ok(crate::autograd::record("to_device", out, &[self], move |dy| Ok(vec![Some(dy.to_device(from)?)])))
    }

    /// Rounds to bfloat16 storage (nearest even). Differentiable; the gradient is f32.
    pub fn to_bf16(&self) -> Result<Tensor> {
        crate::ops::cast(self, Precision::BF16)
    }

    /// Widens to f32. Differentiable.
    pub fn to_f32(&self) -> Result<Tensor> {
        crate::ops::cast(self, Precision::FP32)
    }

    /// Read access to a CPU tensor's elements.
    pub(crate) fn cpu(&self) -> CpuRead<'_> {
        match self.storage() {
            Storage::Cpu(lock) => CpuRead { guard: lock.read().unwrap(), offset: self.offset(), len: self.numel() },
            Storage::Gpu(_) => panic!("cpu(): tensor is on the GPU"),
        }
    }

    /// Write access to a CPU tensor's elements, for in-place updates (optimizers).
    /// Writes are seen by every view of the storage.
    pub(crate) fn cpu_mut(&self) -> CpuWrite<'_> {
        match self.storage() {
            Storage::Cpu(lock) => CpuWrite { guard: lock.write().unwrap(), offset: self.offset(), len: self.numel() },
            Storage::Gpu(_) => panic!("cpu_mut(): tensor is on the GPU"),
        }
    }

    pub(crate) fn gpu(&self) -> &GpuBuffer {
        match self.storage() {
            Storage::Gpu(b) => b,
            Storage::Cpu(_) => panic!("gpu(): tensor is on the CPU"),
        }
    }

    /// This tensor's GPU buffer as a dispatch binds it (`GpuContext::dispatch_windows`): from
    /// byte 0 when the buffer fits one binding, else from a window that starts at or just before
    /// the tensor; and the tensor's element offset in what is bound. An error naming `op` when
    /// the tensor itself is larger than one binding.
    pub(crate) fn gpu_window(&self, op: &str) -> Result<((&GpuBuffer, u64), usize)> {
        let (buf, max) = (self.gpu(), gpu::context()?.max_binding());
        if buf.buffer.size() <= max {
            return Ok(((buf, 0), self.offset()));
        }
        let size = self.dtype().size_bytes();
        let (start, offset) = gpu::window(self.offset(), size);
        if ((offset + self.numel()) * size) as u64 > max {
            bail!(
                Device,
                "{op}: a tensor {:?} of {} bytes is larger than the {max} bytes the GPU binds at once",
                self.shape(),
                self.numel() * size
            );
        }
        Ok(((buf, start), offset))
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {}, {})", self.shape(), self.dtype().name(), self.device().name())
    }
}

/// Host-side rounding used by the CPU cast kernel and tests.
pub fn round_to_bf16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}
