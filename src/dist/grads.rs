//! Bucketed gradient averaging. Parameters are grouped into buckets of a few MiB in the order
//! the backward pass finishes them (last layers first); each bucket's all-reduce starts on the
//! MPI thread as soon as its gradients are final, while the backward pass carries on.

use super::{Dist, Pending};
use crate::{no_grad, ops, Device, Result, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// The bucket plan for one model's parameters.
pub struct GradSync {
    dist: Arc<Dist>,
    /// Parameter indices of each bucket, in launch order.
    buckets: Vec<Vec<usize>>,
    /// Parameter index by tensor id (what the backward hook sees).
    index: HashMap<u64, usize>,
    shapes: Vec<Vec<usize>>,
    devices: Vec<Device>,
}

impl GradSync {
    /// Buckets of at least `bucket_bytes` (the last may be smaller), filled from the last
    /// parameter backwards: the order in which backward completes a Llama-style model.
    pub fn new(dist: Arc<Dist>, params: &[Tensor], bucket_bytes: usize) -> GradSync {
        let mut buckets = Vec::new();
        let (mut bucket, mut bytes) = (Vec::new(), 0);
        for i in (0..params.len()).rev() {
            bucket.push(i);
            bytes += params[i].numel() * 4;
            if bytes >= bucket_bytes {
                buckets.push(std::mem::take(&mut bucket));
                bytes = 0;
            }
        }
        if !bucket.is_empty() {
            buckets.push(bucket);
        }
        GradSync {
            dist,
            buckets,
            index: params.iter().enumerate().map(|(i, p)| (p.id(), i)).collect(),
            shapes: params.iter().map(|p| p.shape().to_vec()).collect(),
            devices: params.iter().map(|p| p.device()).collect(),
        }
    }

    pub fn dist(&self) -> &Arc<Dist> {
        &self.dist
    }

    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// f32 values all-reduced per optimizer step (the gradients; a few scalars ride along).
    pub fn values_per_step(&self) -> usize {
        self.shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// One step's averaging. `acc`: gradients of earlier micro-batches of this step, added in.
    pub fn round(&self, acc: Option<Vec<Tensor>>) -> GradRound<'_> {
        let n = self.shapes.len();
        GradRound { sync: self, acc, host: vec![None; n], ready: vec![false; n], launched: 0, pending: Vec::new() }
    }
}

/// The gradients of one step on their way through the all-reduce.
pub struct GradRound<'a> {
    sync: &'a GradSync,
    acc: Option<Vec<Tensor>>,
    /// Final local gradients on the host, until their bucket is sent.
    host: Vec<Option<Vec<f32>>>,
    ready: Vec<bool>,
    launched: usize,
    pending: Vec<Pending<Vec<f32>>>,
}

impl GradRound<'_> {
    /// The backward hook: `leaf`'s gradient is final. Starts every bucket that is complete
    /// (in order; the last one waits for `finish`, which adds the scalars to it).
    pub fn ready(&mut self, leaf: &Tensor, grad: &Tensor) -> Result<()> {
        let Some(&i) = self.sync.index.get(&leaf.id()) else { return Ok(()) };
        self.set(i, Some(grad))?;
        while self.launched + 1 < self.sync.buckets.len()
            && self.sync.buckets[self.launched].iter().all(|&p| self.ready[p])
        {
            self.launch(Vec::new());
        }
        Ok(())
    }

    fn set(&mut self, i: usize, grad: Option<&Tensor>) -> Result<()> {
        let values = match (grad, &self.acc) {
            (Some(g), Some(acc)) => no_grad(|| ops::add(&acc[i], g))?.to_vec(),
            (Some(g), None) => g.to_vec(),
            (None, Some(acc)) => acc[i].to_vec(),
            (None, None) => vec![0.0; self.sync.shapes[i].iter().product()],
        };
        self.host[i] = Some(values);
        self.ready[i] = true;
        Ok(())
    }

    fn launch(&mut self, extra: Vec<f32>) {
        let b = self.launched;
        let bucket = &self.sync.buckets[b];
        let mut data = Vec::with_capacity(bucket.iter().map(|&i| self.host[i].as_ref().map_or(0, Vec::len)).sum());
        for &i in bucket {
            data.extend(self.host[i].take().expect("a launched bucket is complete"));
        }
        data.extend(extra);
        let what = format!("gradient all-reduce (bucket {} of {})", b + 1, self.sync.buckets.len());
        self.pending.push(self.sync.dist.allreduce_start(what, data));
        self.launched += 1;
    }

    /// Waits for every bucket: the gradients averaged over ranks, in parameter order, on
    /// their devices, and `extra` summed over ranks.
    pub fn finish(mut self, extra: Vec<f32>) -> Result<(Vec<Tensor>, Vec<f32>)> {
        // Parameters the loss does not reach have no gradient: zero (plus earlier micro-batches).
        for i in 0..self.ready.len() {
            if !self.ready[i] {
                self.set(i, None)?;
            }
        }
        if self.sync.buckets.is_empty() {
            return Ok((Vec::new(), self.sync.dist.allreduce("all-reduce of the loss", extra)?));
        }
        let n_extra = extra.len();
        let mut extra = Some(extra);
        while self.launched < self.sync.buckets.len() {
            let last = self.launched + 1 == self.sync.buckets.len();
            self.launch(if last { extra.take().unwrap_or_default() } else { Vec::new() });
        }
        let scale = 1.0 / self.sync.dist.size() as f32;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.ready.len()];
        let mut sums = Vec::new();
        for (b, pending) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let data = pending.wait()?;
            let mut offset = 0;
            for &i in &self.sync.buckets[b] {
                let shape = &self.sync.shapes[i];
                let n: usize = shape.iter().product();
                let avg: Vec<f32> = data[offset..offset + n].iter().map(|v| v * scale).collect();
                grads[i] = Some(Tensor::from_f32_on(&avg, shape, self.sync.devices[i])?);
                offset += n;
            }
            if b + 1 == self.sync.buckets.len() {
                sums = data[offset..offset + n_extra].to_vec();
            }
        }
        Ok((grads.into_iter().map(|g| g.expect("every parameter is in a bucket")).collect(), sums))
    }
}
