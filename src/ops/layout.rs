//! Layout ops: transpose, permute, slice and concat. Each writes a new contiguous tensor
//! (a slice of leading rows is a zero-copy view) through one strided-copy kernel.

use super::{grid_for, on_device, same_device};
use crate::autograd::record;
use crate::device::cpu::CpuBuffer;
use crate::device::gpu::{self, GpuBuffer, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, to_u32};
use crate::tensor::numel;
use crate::{bail, Device, Precision, Result, Tensor};

pub(crate) static KERNEL: Kernel =
    Kernel { name: "layout", source: include_str!("layout.wgsl"), params: &LayoutParams::LAYOUT, codes: &[] };

kernel_params! {
    /// layout.wgsl's Params.
    pub(crate) struct LayoutParams {
        n: u32,
        rank: u32,
        src_off: u32,
        dst_off: u32,
        shape: [u32; 8],
        src_st: [u32; 8],
        dst_st: [u32; 8],
    }
}

const MAX_RANK: usize = 8;

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// The destination of one or more strided copies.
enum Out {
    Cpu(Vec<u32>),
    Gpu(GpuBuffer),
}

impl Out {
    fn new(device: Device, n: usize, zeroed: bool) -> Result<Out> {
        Ok(match device {
            Device::Cpu => Out::Cpu(vec![0; n]),
            Device::Gpu => {
                let ctx = gpu::context()?;
                Out::Gpu(if zeroed { ctx.zeros(n as u64 * 4) } else { ctx.alloc(n as u64 * 4) })
            }
        })
    }

    /// For every index i of `shape`: out[dst_off + i·dst_st] = src[src_off + i·src_st].
    /// `op` names the copy for the profiler.
    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        op: &'static str,
        src: &Tensor,
        shape: &[usize],
        src_off: usize,
        src_st: &[usize],
        dst_off: usize,
        dst_st: &[usize],
    ) -> Result<()> {
        let n = numel(shape);
        if n == 0 {
            return Ok(());
        }
        // Each arm gets its own borrow of the destination; on_device runs the one that exists.
        let (device, cpu_dst, gpu_dst) = match self {
            Out::Cpu(dst) => (Device::Cpu, Some(dst), None),
            Out::Gpu(dst) => (Device::Gpu, None, Some(&*dst)),
        };
        on_device(
            op,
            device,
            || {
                let dst = cpu_dst.expect("layout: CPU destination");
                let r = src.cpu();
                let sv: &[u32] = match src.dtype() {
                    Precision::FP32 => bytemuck::cast_slice(r.f32()),
                    _ => r.u32(),
                };
                // Runs along the innermost dim where both sides are contiguous in it (a permute
                // that keeps the last dim, as attention's do), else elements.
                let last = shape.len().saturating_sub(1);
                let run = if src_st.get(last) == Some(&1) && dst_st.get(last) == Some(&1) { shape[last] } else { 1 };
                let rank = if run > 1 { last } else { shape.len() };
                // Odometer over the dims outside a run, innermost fastest.
                let mut idx = vec![0usize; rank];
                let (mut s, mut d) = (src_off, dst_off);
                for _ in 0..n / run {
                    dst[d..d + run].copy_from_slice(&sv[s..s + run]);
                    for k in (0..rank).rev() {
                        idx[k] += 1;
                        s += src_st[k];
                        d += dst_st[k];
                        if idx[k] < shape[k] {
                            break;
                        }
                        s -= src_st[k] * shape[k];
                        d -= dst_st[k] * shape[k];
                        idx[k] = 0;
                    }
                }
                Ok(())
            },
            || {
                let dst = gpu_dst.expect("layout: GPU destination");
                let ctx = gpu::context()?;
                // Dims past the rank are 1 (array<vec4<u32>, 2> in the WGSL: MAX_RANK = 8).
                let dims = |v: &[usize]| -> Result<[u32; MAX_RANK]> {
                    let mut out = [1; MAX_RANK];
                    for (o, &d) in out.iter_mut().zip(v) {
                        *o = to_u32("layout copy", "size or stride", d)?;
                    }
                    Ok(out)
                };
                let params = LayoutParams {
                    n: to_u32("layout copy", "elements", n)?,
                    rank: shape.len() as u32,
                    src_off: to_u32("layout copy", "source offset", src.offset() + src_off)?,
                    dst_off: to_u32("layout copy", "destination offset", dst_off)?,
                    shape: dims(shape)?,
                    src_st: dims(src_st)?,
                    dst_st: dims(dst_st)?,
                };
                ctx.dispatch(&KERNEL, "copy", &params, &[src.gpu(), dst], grid_for(n))?;
                Ok(())
            },
        )
    }

    fn into_tensor(self, shape: &[usize], dtype: Precision) -> Tensor {
        match (self, dtype) {
            (Out::Cpu(v), Precision::FP32) => Tensor::cpu_f32(bytemuck::cast_vec(v), shape),
            (Out::Cpu(v), _) => Tensor::from_cpu(CpuBuffer::U32(v), shape),
            (Out::Gpu(b), _) => Tensor::from_gpu(b, shape, dtype),
        }
    }
}

/// Runs a word-copying op on BF16 by going through f32 (the kernel moves 32-bit words).
fn via_f32(x: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if x.dtype() == Precision::BF16 {
        f(&x.to_f32()?)?.to_bf16()
    } else {
        f(x)
    }
}

fn check_rank(op: &str, shape: &[usize]) -> Result<()> {
    if shape.len() > MAX_RANK {
        bail!(Shape, "{op}: at most {MAX_RANK} dims are supported, got shape {shape:?}");
    }
    Ok(())
}

/// Reorders dims: output dim i is input dim `perm[i]`.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    via_f32(x, |x| {
        let shape = x.shape();
        check_rank("permute", shape)?;
        let mut seen = vec![false; shape.len()];
        if perm.len() != shape.len() || perm.iter().any(|&p| p >= shape.len() || std::mem::replace(&mut seen[p], true))
        {
            bail!(Shape, "permute: {perm:?} is not a permutation of the {} dims of shape {shape:?}", shape.len());
        }
        let st = strides(shape);
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let src_st: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
        let mut out = Out::new(x.device(), x.numel(), false)?;
        out.copy("permute", x, &out_shape, 0, &src_st, 0, &strides(&out_shape))?;
        let out = out.into_tensor(&out_shape, x.dtype());
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(record("permute", out, &[x], move |dy| Ok(vec![Some(permute(dy, &inverse)?)])))
    })
}

/// Swaps the last two dims: [.., M, N] -> [.., N, M].
pub fn transpose(x: &Tensor) -> Result<Tensor> {
    let r = x.rank();
    if r < 2 {
        bail!(Shape, "transpose: needs at least 2 dims, got shape {:?}", x.shape());
    }
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    permute(x, &perm)
}

/// Elements `start..start + len` along `dim`.
pub fn slice(x: &Tensor, dim: usize, start: usize, len: usize) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    if dim >= shape.len() || start + len > shape[dim] {
        bail!(Shape, "slice: range {start}..{} of dim {dim} is outside shape {shape:?}", start + len);
    }
    let st = strides(&shape);
    let mut out_shape = shape.clone();
    out_shape[dim] = len;
    let out = if shape[..dim].iter().all(|&d| d == 1) {
        // A contiguous run of the storage: share it.
        Tensor::from_storage(x.storage().clone(), x.offset() + start * st[dim], &out_shape, x.dtype())
    } else {
        return via_f32(x, |x| {
            let mut out = Out::new(x.device(), numel(&out_shape), false)?;
            out.copy("slice", x, &out_shape, start * st[dim], &st, 0, &strides(&out_shape))?;
            let out = out.into_tensor(&out_shape, x.dtype());
            Ok(record("slice", out, &[x], move |dy| Ok(vec![Some(pad(dy, &shape, dim, start)?)])))
        });
    };
    Ok(record("slice", out, &[x], move |dy| Ok(vec![Some(pad(dy, &shape, dim, start)?)])))
}

/// Backward of slice: `dy` placed at `start` along `dim` in zeros of `shape`.
fn pad(dy: &Tensor, shape: &[usize], dim: usize, start: usize) -> Result<Tensor> {
    let st = strides(shape);
    let mut out = Out::new(dy.device(), numel(shape), true)?;
    out.copy("slice_backward", dy, dy.shape(), 0, &strides(dy.shape()), start * st[dim], &st)?;
    Ok(out.into_tensor(shape, Precision::FP32))
}

/// Joins tensors along `dim`; all other dims must agree.
pub fn concat(xs: &[&Tensor], dim: usize) -> Result<Tensor> {
    let Some(first) = xs.first() else { bail!(Shape, "concat: needs at least one tensor") };
    let device = same_device("concat", xs)?;
    let dtype = first.dtype();
    let s0 = first.shape();
    check_rank("concat", s0)?;
    for x in xs {
        let ok = x.rank() == s0.len() && dim < s0.len() && (0..s0.len()).all(|d| d == dim || x.shape()[d] == s0[d]);
        if !ok {
            let shapes: Vec<_> = xs.iter().map(|x| x.shape().to_vec()).collect();
            bail!(Shape, "concat: shapes {shapes:?} do not agree outside dim {dim}");
        }
        if x.dtype() != dtype {
            bail!(Dtype, "concat: mixed dtypes {} and {}", dtype.name(), x.dtype().name());
        }
    }
    let mut out_shape = s0.to_vec();
    out_shape[dim] = xs.iter().map(|x| x.shape()[dim]).sum();
    let starts: Vec<(usize, usize)> =
        xs.iter().scan(0, |at, x| Some((std::mem::replace(at, *at + x.shape()[dim]), x.shape()[dim]))).collect();
    let backward = move |dy: &Tensor| starts.iter().map(|&(s, len)| slice(dy, dim, s, len).map(Some)).collect();
    // Pieces that already lie one after another in one buffer (a model's flat parameters,
    // joined along their leading dim): the result is a view of them.
    let adjacent = xs.windows(2).all(|w| w[1].shares_storage(w[0]) && w[1].offset() == w[0].offset() + w[0].numel());
    if adjacent && s0[..dim].iter().all(|&d| d == 1) {
        let out = Tensor::from_storage(first.storage().clone(), first.offset(), &out_shape, dtype);
        return Ok(record("concat", out, xs, backward));
    }
    if dtype == Precision::BF16 {
        let wide = xs.iter().map(|x| x.to_f32()).collect::<Result<Vec<_>>>()?;
        return concat(&wide.iter().collect::<Vec<_>>(), dim)?.to_bf16();
    }
    let st = strides(&out_shape);
    let mut out = Out::new(device, numel(&out_shape), false)?;
    let mut at = 0;
    for x in xs {
        out.copy("concat", x, x.shape(), 0, &strides(x.shape()), at * st[dim], &st)?;
        at += x.shape()[dim];
    }
    Ok(record("concat", out.into_tensor(&out_shape, dtype), xs, backward))
}
