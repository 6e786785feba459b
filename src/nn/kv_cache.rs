//! KvCache: the keys and values of the positions generated so far, one per layer.

use crate::ops;
use crate::{bail, Precision, Result, Tensor};

/// Keys and values of the positions seen so far, one per layer: [B, T, Hkv, D] each. For one
/// sequence (B = 1) they live in buffers made for `capacity` positions, and each new position is
/// copied in at its place (no copy of the earlier ones); for a batch they are joined anew.
#[derive(Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Positions the buffers hold (0: join anew each time).
    capacity: usize,
}

impl KvCache {
    /// An empty cache that holds up to `capacity` positions of one sequence without copying.
    pub fn with_capacity(capacity: usize) -> KvCache {
        KvCache { capacity, ..Default::default() }
    }

    /// Appends the new positions and returns the whole keys and values.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let &[b, t, h, d] = k.shape() else {
            bail!(Shape, "kv cache: keys must be [B, T, H, D], got {:?}", k.shape());
        };
        if b != 1 || self.capacity == 0 || k.dtype() != Precision::FP32 || v.dtype() != Precision::FP32 {
            let (k, v) = match (self.k.take(), self.v.take()) {
                (Some(pk), Some(pv)) => (ops::concat(&[&pk, &k], 1)?, ops::concat(&[&pv, &v], 1)?),
                _ => (k, v),
            };
            self.len = k.shape()[1];
            self.k = Some(k.clone());
            self.v = Some(v.clone());
            return Ok((k, v));
        }
        if self.len + t > self.capacity {
            bail!(Invalid, "kv cache: {} positions cached and {t} more exceed its {}", self.len, self.capacity);
        }
        let device = k.device();
        let row = h * d;
        let mut views = Vec::with_capacity(2);
        for (slot, new) in [(&mut self.k, &k), (&mut self.v, &v)] {
            let buf = slot.get_or_insert_with(|| Tensor::zeros_on(&[1, self.capacity, h, d], Precision::FP32, device));
            let at = |n: usize, shape: &[usize]| {
                Tensor::from_storage(buf.storage().clone(), buf.offset() + n * row, shape, Precision::FP32)
            };
            ops::flat::copy_into(&at(self.len, new.shape()), new)?;
            views.push(at(0, &[1, self.len + t, h, d]));
        }
        self.len += t;
        let v = views.pop().expect("two views");
        Ok((views.pop().expect("two views"), v))
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
