//! Flat storage: several tensors as views of one buffer, so that work over all of them (the
//! optimizer step, the gradient norm) runs as one dispatch instead of one per tensor. On the
//! GPU a buffer holds what one binding can (2 GiB on Vulkan with NVIDIA): a 1B-parameter
//! model's weights are two buffers, its optimizer state four.

use super::{on_device, same_device};
use crate::device::gpu;
use crate::tensor::numel;
use crate::{bail, Device, Precision, Result, Tensor};

/// Views start at multiples of this many elements: bf16 views never share a u32 word, and
/// vector loads of any view stay aligned.
const ALIGN: usize = 64;

/// Which buffer each view of `numels` goes to, its element offset there, and each buffer's
/// length: views follow one another (each starting at a multiple of ALIGN) while they fit in
/// `limit` elements; a view larger than that has a buffer of its own.
fn layout(numels: impl IntoIterator<Item = usize>, limit: usize) -> (Vec<(usize, usize)>, Vec<usize>) {
    let (mut places, mut lens) = (Vec::new(), vec![0]);
    for n in numels {
        let mut at = *lens.last().expect("one buffer at least");
        if at > 0 && at + n > limit {
            lens.push(0);
            at = 0;
        }
        places.push((lens.len() - 1, at));
        *lens.last_mut().expect("one buffer at least") = (at + n).div_ceil(ALIGN) * ALIGN;
    }
    (places, lens)
}

/// Zeroed views shaped as `shapes` on `device`, sharing as few buffers as the GPU's binding
/// limit allows (one on the CPU): see `layout`.
pub(crate) fn zeros(shapes: &[&[usize]], dtype: Precision, device: Device) -> Vec<Tensor> {
    let limit = match device {
        Device::Gpu => gpu::started().map_or(u64::MAX, |c| c.max_binding()) / dtype.size_bytes() as u64,
        Device::Cpu => u64::MAX,
    };
    let (places, lens) = layout(shapes.iter().map(|s| numel(s)), usize::try_from(limit).unwrap_or(usize::MAX));
    let flats: Vec<Tensor> = lens.iter().map(|&n| Tensor::zeros_on(&[n], dtype, device)).collect();
    shapes.iter().zip(places).map(|(s, (b, o))| Tensor::from_storage(flats[b].storage().clone(), o, s, dtype)).collect()
}

/// Copies of `tensors` (one device and dtype) as views of one new buffer, not tracking gradients.
pub(crate) fn pack(tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    let Some(first) = tensors.first() else { return Ok(Vec::new()) };
    let dtype = first.dtype();
    if let Some(t) = tensors.iter().find(|t| t.dtype() != dtype) {
        bail!(Dtype, "pack: tensors must share a dtype, got {} and {}", dtype.name(), t.dtype().name());
    }
    same_device("pack", &tensors.iter().collect::<Vec<_>>())?;
    let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
    let views = zeros(&shapes, dtype, first.device());
    for (v, t) in views.iter().zip(tensors) {
        // A bf16 view of odd length is copied with the element after it: padding (ALIGN).
        copy(v, t, true)?;
    }
    Ok(views)
}

/// Writes `src` over `dst` in place: the same float dtype and element count, on one device.
pub(crate) fn copy_into(dst: &Tensor, src: &Tensor) -> Result<()> {
    copy(dst, src, false)
}

fn copy(dst: &Tensor, src: &Tensor, into_padding: bool) -> Result<()> {
    if dst.dtype() != src.dtype() || dst.numel() != src.numel() || dst.dtype() == Precision::U32 {
        bail!(
            Shape,
            "copy_into: destination {} {:?} and source {} {:?} must match",
            dst.dtype().name(),
            dst.shape(),
            src.dtype().name(),
            src.shape()
        );
    }
    on_device(
        "copy",
        same_device("copy_into", &[dst, src])?,
        || {
            let (s, mut d) = (src.cpu(), dst.cpu_mut());
            match dst.dtype() {
                Precision::BF16 => d.bf16().copy_from_slice(s.bf16()),
                _ => d.f32().copy_from_slice(s.f32()),
            }
            Ok(())
        },
        || {
            let ctx = gpu::context()?;
            let size = dst.dtype().size_bytes() as u64;
            let (so, dof, mut bytes) =
                (src.offset() as u64 * size, dst.offset() as u64 * size, src.numel() as u64 * size);
            if into_padding {
                bytes = bytes.div_ceil(4) * 4; // buffers are whole 256-byte size classes
            }
            if !(so | dof | bytes).is_multiple_of(4) {
                bail!(Invalid, "copy_into: bf16 views must start and end on even elements on the GPU");
            }
            let (s, d) = (&src.gpu().buffer, &dst.gpu().buffer);
            ctx.record(|enc| enc.copy_buffer_to_buffer(s, so, d, dof, bytes));
            Ok(())
        },
    )
}

/// Splits 0..n into runs that one dispatch can cover: `joins(first, k)` says whether item k
/// can share the run that starts at item `first`.
pub(crate) fn runs(n: usize, joins: impl Fn(usize, usize) -> bool) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=n {
        if k == n || !joins(start, k) {
            out.push(start..k);
            start = k;
        }
    }
    out
}
