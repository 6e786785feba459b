//! Host access to a CPU tensor's elements: read and write locks narrowed to the tensor's range.

use crate::device::CpuBuffer;
use half::bf16;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

/// A read lock on a CPU tensor's storage, narrowed to the tensor's elements.
pub(crate) struct CpuRead<'a> {
    pub(super) guard: RwLockReadGuard<'a, CpuBuffer>,
    pub(super) offset: usize,
    pub(super) len: usize,
}

impl CpuRead<'_> {
    pub(super) fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }

    pub fn f32(&self) -> &[f32] {
        match &*self.guard {
            CpuBuffer::F32(v) => &v[self.range()],
            _ => panic!("CpuRead::f32 on a non-f32 tensor"),
        }
    }

    pub fn bf16(&self) -> &[bf16] {
        match &*self.guard {
            CpuBuffer::BF16(v) => &v[self.range()],
            _ => panic!("CpuRead::bf16 on a non-bf16 tensor"),
        }
    }

    pub fn u32(&self) -> &[u32] {
        match &*self.guard {
            CpuBuffer::U32(v) => &v[self.range()],
            _ => panic!("CpuRead::u32 on a non-u32 tensor"),
        }
    }
}

/// A write lock on a CPU tensor's storage, narrowed to the tensor's elements.
pub(crate) struct CpuWrite<'a> {
    pub(super) guard: RwLockWriteGuard<'a, CpuBuffer>,
    pub(super) offset: usize,
    pub(super) len: usize,
}

impl CpuWrite<'_> {
    pub fn f32(&mut self) -> &mut [f32] {
        let r = self.offset..self.offset + self.len;
        match &mut *self.guard {
            CpuBuffer::F32(v) => &mut v[r],
            _ => panic!("CpuWrite::f32 on a non-f32 tensor"),
        }
    }

    pub fn bf16(&mut self) -> &mut [bf16] {
        let r = self.offset..self.offset + self.len;
        match &mut *self.guard {
            CpuBuffer::BF16(v) => &mut v[r],
            _ => panic!("CpuWrite::bf16 on a non-bf16 tensor"),
        }
    }

    pub fn u32(&mut self) -> &mut [u32] {
        let r = self.offset..self.offset + self.len;
        match &mut *self.guard {
            CpuBuffer::U32(v) => &mut v[r],
            _ => panic!("CpuWrite::u32 on a non-u32 tensor"),
        }
    }
}
