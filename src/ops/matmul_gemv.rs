//! The GPU matmul of few rows (decoding): A [M, K] · Bᵀ with M <= 8, reading B once.

use super::matmul::MatmulParams;
use crate::device::gpu::{self, grid, to_u32, Kernel, KernelParams};
use crate::{Precision, Result, Tensor};

pub(crate) static GEMV_KERNEL: Kernel = Kernel {
    name: "matmul_gemv",
    source: concat!(include_str!("matmul_common.wgsl"), include_str!("matmul_gemv.wgsl")),
    params: &MatmulParams::LAYOUT,
    codes: &[],
};

/// Rows of A the kernel takes at most (its ROWS), and output columns a workgroup (its COLS).
const ROWS: usize = 8;
const COLS: usize = 8;

/// a [M, K] · bᵀ (b [N, K]) -> [M, N] through the kernel, when it applies: at most 8 rows, one
/// product, K and both offsets (within their bindings) multiples of 4. None otherwise.
pub(super) fn gemv_nt(a: &Tensor, b: &Tensor, m: usize, n: usize, k: usize) -> Result<Option<Tensor>> {
    let ((a_buf, a_start), a_off) = a.gpu_window("matmul")?;
    let ((b_buf, b_start), b_off) = b.gpu_window("matmul")?;
    if m == 0
        || n == 0
        || k == 0
        || m > ROWS
        || !(k.is_multiple_of(4) && a_off.is_multiple_of(4) && b_off.is_multiple_of(4))
    {
        return Ok(None);
    }
    let ctx = gpu::context()?;
    let out = ctx.alloc((m * n) as u64 * 4);
    let u = |what, v| to_u32("matmul", what, v);
    let params = MatmulParams {
        m: u("rows", m)?,
        n: u("columns", n)?,
        k: u("inner dim", k)?,
        a_off: u("a offset", a_off)?,
        b_off: u("b offset", b_off)?,
        tb: 1,
        aligned: 1,
        splits: 1,
        ks: u("inner dim", k)?,
        ..Default::default()
    };
    let groups = grid(u("column groups", n.div_ceil(COLS))?);
    ctx.dispatch_windows(&GEMV_KERNEL, "gemv_nt", &params, &[(a_buf, a_start), (b_buf, b_start), (&out, 0)], groups)?;
    Ok(Some(Tensor::from_gpu(out, &[m, n], Precision::FP32)))
}
