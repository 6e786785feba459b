//! KvCache: the keys and values of the positions generated so far, one per layer.

use crate::ops;
use crate::{bail, Precision, Result, Tensor};

/// Keys and values of the positions seen so far, one per layer: [B, T, Hkv, D] each, in buffers
/// made for `capacity` positions of each sequence; each new position is copied in at its place
/// (no copy of the earlier ones), and attention reads the first `len` positions of each sequence.
#[derive(Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
    /// Positions the buffers hold per sequence (0: join anew each time).
    capacity: usize,
}

impl KvCache {
    /// An empty cache that holds up to `capacity` positions of each sequence without copying.
    pub fn with_capacity(capacity: usize) -> KvCache {
        KvCache { capacity, ..Default::default() }
    }

    /// Appends the new positions k, v [B, T, H, D] and returns the whole buffers [B, Cap, H, D],
    /// of which the first `len()` positions of each sequence are filled (Cap = len() when the
    /// cache has no capacity or the keys are not f32: then they are joined anew).
    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let &[b, t, h, d] = k.shape() else {
            bail!(Shape, "kv cache: keys must be [B, T, H, D], got {:?}", k.shape());
        };
        if v.shape() != k.shape() {
            bail!(Shape, "kv cache: values {:?} must match keys {:?}", v.shape(), k.shape());
        }
        if let Some(old) = self.k.as_ref().filter(|o| o.shape()[0] != b || o.shape()[2..] != [h, d]) {
            bail!(Shape, "kv cache: keys {:?} do not continue the cached {:?}", k.shape(), old.shape());
        }
        if self.capacity == 0 || k.dtype() != Precision::FP32 || v.dtype() != Precision::FP32 {
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
        let (device, cap, row) = (k.device(), self.capacity, h * d);
        for (slot, new) in [(&mut self.k, &k), (&mut self.v, &v)] {
            let buf = slot.get_or_insert_with(|| Tensor::zeros_on(&[b, cap, h, d], Precision::FP32, device));
            // Sequence i's new rows go after its cached ones: one copy per sequence.
            for i in 0..b {
                let dst = Tensor::from_storage(
                    buf.storage().clone(),
                    buf.offset() + (i * cap + self.len) * row,
                    &[1, t, h, d],
                    Precision::FP32,
                );
                let src = Tensor::from_storage(
                    new.storage().clone(),
                    new.offset() + i * t * row,
                    &[1, t, h, d],
                    Precision::FP32,
                );
                ops::flat::copy_into(&dst, &src)?;
            }
        }
        self.len += t;
        Ok((self.k.clone().expect("keys cached"), self.v.clone().expect("values cached")))
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
