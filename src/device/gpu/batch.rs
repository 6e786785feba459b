//! Command batching: GPU work is recorded into one encoder and submitted together.
//! A host read, `CommandBatch::sync`/`commit_async`/`end`, or a full batch submits it.

use super::{count, observer, pool::Kind, started, GpuBuffer, GpuContext, Kernel, KernelParams};
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// Where a binding of a tensor's storage starts: the byte offset (256-aligned, as every backend
/// allows) at or before element `offset` of `elem_bytes` bytes each, and the element offset of
/// the tensor within that window.
pub fn window(offset: usize, elem_bytes: usize) -> (u64, usize) {
    let start = offset * elem_bytes / 256 * 256;
    (start as u64, offset - start / elem_bytes)
}

/// Each dispatch gets one 256-byte slot of uniform parameters.
const SLOT: usize = 256;
/// Dispatches per submitted command buffer (the params arena is `SLOT * MAX_DISPATCHES`).
const MAX_DISPATCHES: usize = 256;
/// Outside `CommandBatch::begin`/`end`, submit sooner so the GPU starts early.
const UNBATCHED_DISPATCHES: usize = 32;

static BATCHING: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
pub(super) struct Batch {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    params_buf: Option<wgpu::Buffer>,
    dispatches: usize,
    /// While profiling with timestamps: this batch's query set and the op of each timed pass.
    queries: Option<Queries>,
    /// Bind groups made so far, by what they bind: a decode step repeats the last one's
    /// dispatches on the same pooled buffers, so it makes none.
    bind_groups: HashMap<BindKey, wgpu::BindGroup>,
}

/// What a bind group binds: the pipeline's (kernel, entry), the params slot, each buffer window.
#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    kernel: &'static str,
    entry: &'static str,
    params: (wgpu::Buffer, usize),
    buffers: Vec<(wgpu::Buffer, u64, u64)>,
}

/// Bind groups kept at most; then the cache starts again (a bound for long, varied runs).
const MAX_BIND_GROUPS: usize = 4096;

/// Two timestamps (start, end of the compute pass) per timed dispatch of one batch; resolved
/// and copied into `readback` at submit, read once the batch's work is done.
struct Queries {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// The op of dispatch i, whose timestamps are queries 2i and 2i + 1.
    ops: Vec<&'static str>,
    /// MAPPING, then MAPPED or FAILED when the readback's map completes.
    state: Arc<AtomicU8>,
}

const MAPPING: u8 = 0;
const MAPPED: u8 = 1;
const FAILED: u8 = 2;

/// Query sets waiting for their batch to finish, and free ones to reuse (one per batch in flight).
#[derive(Default)]
pub(super) struct Timing {
    pending: Vec<Queries>,
    free: Vec<Queries>,
}

impl GpuContext {
    /// Runs `f` on the open encoder (created on demand).
    pub(crate) fn record(&self, f: impl FnOnce(&mut wgpu::CommandEncoder)) {
        let mut b = self.batch.lock().unwrap();
        let enc = b.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        f(enc);
    }

    pub(super) fn retire(&self, buffer: wgpu::Buffer) {
        let b = self.batch.lock().unwrap();
        if b.encoder.is_some() {
            self.pool.retire(buffer);
        } else {
            // Submitted work that still reads it runs before any later use, in queue order.
            self.pool.give(buffer, Kind::Storage);
        }
    }

    /// Queues one compute dispatch of `entry` in `kernel`. Binding 0 is the uniform `params`
    /// (the kernel's own params struct), bindings 1.. are `buffers` in order; the entry point
    /// must use each of them. An error names the kernel when a buffer is larger than one binding
    /// (its op must use `dispatch_windows`) or wgpu refused the work.
    pub fn dispatch<P: KernelParams>(
        &self,
        kernel: &Kernel,
        entry: &'static str,
        params: &P,
        buffers: &[&GpuBuffer],
        groups: [u32; 3],
    ) -> Result<()> {
        if let Some(b) = buffers.iter().find(|b| b.buffer.size() > self.max_binding) {
            return Err(Error::Device(format!(
                "{}: a tensor of {} bytes is larger than the {} bytes the GPU binds at once, and this op cannot split it",
                kernel.name,
                b.buffer.size(),
                self.max_binding
            )));
        }
        let windows: Vec<(&GpuBuffer, u64)> = buffers.iter().map(|&b| (b, 0)).collect();
        self.dispatch_windows(kernel, entry, params, &windows, groups)
    }

    /// `dispatch` with each buffer bound from a byte offset (a multiple of 256: see `window`),
    /// at most `max_binding` bytes of it.
    pub fn dispatch_windows<P: KernelParams>(
        &self,
        kernel: &Kernel,
        entry: &'static str,
        params: &P,
        buffers: &[(&GpuBuffer, u64)],
        groups: [u32; 3],
    ) -> Result<()> {
        const { assert!(std::mem::size_of::<P>() <= SLOT, "kernel params must fit one uniform slot") };
        debug_assert_eq!(
            P::LAYOUT.name,
            kernel.params.name,
            "{}: dispatched with another kernel's params",
            kernel.name
        );
        let pipeline = self.pipeline(kernel, entry);
        let watcher = observer().filter(|o| o.enabled());
        let op = watcher.map(|o| o.op());
        let full = {
            let mut b = self.batch.lock().unwrap();
            let b = &mut *b;
            if b.dispatches >= MAX_DISPATCHES {
                // Another thread filled the arena between its dispatch and its flush.
                self.submit(b);
            }
            let params_buf = b
                .params_buf
                .get_or_insert_with(|| {
                    self.pool.take(&self.device, (SLOT * MAX_DISPATCHES) as u64, Kind::Uniform, false, u64::MAX)
                })
                .clone();
            let offset = b.params.len();
            b.params.extend_from_slice(bytemuck::bytes_of(params));
            b.params.resize(offset + SLOT, 0);
            let sizes: Vec<u64> = buffers
                .iter()
                .map(|(buf, start)| (buf.buffer.size() - start.min(&buf.buffer.size())).min(self.max_binding))
                .collect();
            let key = BindKey {
                kernel: kernel.name,
                entry,
                params: (params_buf.clone(), offset),
                buffers: buffers
                    .iter()
                    .zip(&sizes)
                    .map(|((buf, start), &size)| (buf.buffer.clone(), *start, size))
                    .collect(),
            };
            let bind_group = match b.bind_groups.get(&key) {
                Some(g) => g.clone(),
                None => {
                    let mut entries = vec![wgpu::BindGroupEntry {
                        binding: 0,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &params_buf,
                            offset: offset as u64,
                            size: wgpu::BufferSize::new(SLOT as u64),
                        }),
                    }];
                    for (i, ((buf, start), &size)) in buffers.iter().zip(&sizes).enumerate() {
                        entries.push(wgpu::BindGroupEntry {
                            binding: i as u32 + 1,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &buf.buffer,
                                offset: *start,
                                size: wgpu::BufferSize::new(size),
                            }),
                        });
                    }
                    let g = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: None,
                        layout: &pipeline.get_bind_group_layout(0),
                        entries: &entries,
                    });
                    // Validation errors (this bind group's, or an allocation's since the last
                    // dispatch) are reported within the calls: record and keep nothing that used them.
                    if let Err(e) = self.check(kernel.name) {
                        b.params.truncate(offset);
                        return Err(e);
                    }
                    count(|c| c.bind_groups += 1);
                    if b.bind_groups.len() >= MAX_BIND_GROUPS {
                        b.bind_groups.clear();
                    }
                    b.bind_groups.insert(key, g.clone());
                    g
                }
            };
            let timestamp_writes = match op {
                Some(op) if self.timestamps() => {
                    let q = b.queries.get_or_insert_with(|| self.take_queries());
                    let i = 2 * q.ops.len() as u32;
                    q.ops.push(op);
                    Some(wgpu::ComputePassTimestampWrites {
                        query_set: &q.set,
                        beginning_of_pass_write_index: Some(i),
                        end_of_pass_write_index: Some(i + 1),
                    })
                }
                _ => None,
            };
            let enc = b.encoder.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            }
            b.dispatches += 1;
            let limit = if BATCHING.load(Ordering::Relaxed) { MAX_DISPATCHES } else { UNBATCHED_DISPATCHES };
            b.dispatches >= limit
        };
        count(|c| c.dispatches += 1);
        if let (Some(w), Some(op)) = (watcher, op) {
            w.dispatched(op);
        }
        if self.sync_every_op {
            self.flush();
            self.wait();
        } else if full {
            self.flush();
        }
        self.check(kernel.name)
    }

    /// Submits everything recorded so far (does not wait).
    pub fn flush(&self) {
        self.submit(&mut self.batch.lock().unwrap());
    }

    fn submit(&self, b: &mut Batch) {
        let Some(mut enc) = b.encoder.take() else { return };
        if let Some(params_buf) = b.params_buf.take() {
            self.queue.write_buffer(&params_buf, 0, &b.params);
            // Queue order makes the next batch's write of this buffer land after this submit.
            self.pool.give(params_buf, Kind::Uniform);
        }
        let queries = b.queries.take();
        if let Some(q) = &queries {
            let n = 2 * q.ops.len() as u32;
            enc.resolve_query_set(&q.set, 0..n, &q.resolve, 0);
            enc.copy_buffer_to_buffer(&q.resolve, 0, &q.readback, 0, n as u64 * 8);
        }
        self.queue.submit([enc.finish()]);
        count(|c| c.submits += 1);
        if let Some(q) = queries {
            let bytes = q.ops.len() as u64 * 16;
            let state = q.state.clone();
            state.store(MAPPING, Ordering::Relaxed);
            q.readback.slice(0..bytes).map_async(wgpu::MapMode::Read, move |r| {
                state.store(if r.is_ok() { MAPPED } else { FAILED }, Ordering::Release);
            });
            self.timing.lock().unwrap().pending.push(q);
        }
        self.pool.settle();
        b.params.clear();
        b.dispatches = 0;
    }
}

impl GpuContext {
    /// A free query set with its buffers, or a new one (sized for a full batch).
    fn take_queries(&self) -> Queries {
        if let Some(q) = self.timing.lock().unwrap().free.pop() {
            return q;
        }
        let count = 2 * MAX_DISPATCHES as u32;
        let buffer = |usage| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile timestamps"),
                size: count as u64 * 8,
                usage,
                mapped_at_creation: false,
            })
        };
        Queries {
            set: self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count,
            }),
            resolve: buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            ops: Vec::new(),
            state: Arc::new(AtomicU8::new(MAPPING)),
        }
    }

    /// Adds the times of finished batches to their ops (called after a wait).
    pub(super) fn collect_timestamps(&self) {
        let mut times = Vec::new();
        {
            let mut t = self.timing.lock().unwrap();
            if t.pending.is_empty() {
                return;
            }
            let period = self.queue.get_timestamp_period() as f64;
            let mut i = 0;
            while i < t.pending.len() {
                match t.pending[i].state.load(Ordering::Acquire) {
                    MAPPING => i += 1,
                    MAPPED => {
                        let mut q = t.pending.swap_remove(i);
                        {
                            let slice = q.readback.slice(0..q.ops.len() as u64 * 16);
                            let view = slice.get_mapped_range().expect("profile: mapping timestamps failed");
                            for (op, ticks) in q.ops.iter().zip(view.chunks_exact(16)) {
                                let start = u64::from_le_bytes(ticks[..8].try_into().unwrap());
                                let end = u64::from_le_bytes(ticks[8..].try_into().unwrap());
                                times.push((*op, end.saturating_sub(start) as f64 * period));
                            }
                        }
                        q.readback.unmap();
                        q.ops.clear();
                        t.free.push(q);
                    }
                    _ => {
                        // The map failed (device lost?): drop these times and the set.
                        t.pending.swap_remove(i);
                    }
                }
            }
        }
        if let Some(o) = observer() {
            o.timed(&times);
        }
    }
}

/// The batching API. GPU ops are always queued; these calls say when to submit and wait.
/// With no GPU context started (a run on the CPU) they do nothing, and start none.
pub struct CommandBatch;

impl CommandBatch {
    /// Starts a batch: ops are recorded into large command buffers until `sync`/`end`.
    pub fn begin() {
        BATCHING.store(true, Ordering::Relaxed);
    }

    /// Submits the queued work and waits for it.
    pub fn sync() {
        if let Some(ctx) = started() {
            ctx.flush();
            ctx.wait();
        }
    }

    /// Ends batching mode and submits what is queued (without waiting).
    pub fn end() {
        BATCHING.store(false, Ordering::Relaxed);
        Self::commit_async();
    }

    /// Submits the queued work and returns at once, so the CPU can prepare the next batch.
    pub fn commit_async() {
        if let Some(ctx) = started() {
            ctx.flush();
        }
    }

    /// Waits for all submitted work.
    pub fn wait_for_completion() {
        if let Some(ctx) = started() {
            ctx.wait();
        }
    }

    pub fn is_active() -> bool {
        BATCHING.load(Ordering::Relaxed)
    }
}
