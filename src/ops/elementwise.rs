//! Elementwise ops: unary maps, scale, and binary ops where the smaller operand's shape is a
//! suffix of the larger's (it repeats, like a bias).

use super::{float_input, grid_for, on_device, same_device, sum_to};
use crate::autograd::record;
use crate::device::cpu::{self, CHUNK};
use crate::device::gpu::{self, Kernel, KernelParams};
use crate::device::gpu::{kernel_params, op_codes, to_u32};
use crate::{bail, Precision, Result, Tensor};
use rayon::prelude::*;

pub(crate) static KERNEL: Kernel = Kernel {
    name: "elementwise",
    source: include_str!("elementwise.wgsl"),
    params: &ElementwiseParams::LAYOUT,
    codes: &[UnaryCode::WGSL, Binary::WGSL],
};

kernel_params! {
    /// elementwise.wgsl's Params.
    pub(crate) struct ElementwiseParams {
        n: u32,
        op: u32,
        x_off: u32,
        y_off: u32,
        nx: u32,
        ny: u32,
        s: f32,
    }
}

#[derive(Clone, Copy, Debug)]
enum Unary {
    Neg,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Silu,
    Gelu,
    Relu,
    Scale(f32),
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

fn gelu_u(v: f32) -> f32 {
    (GELU_C * (v + 0.044715 * v * v * v)).clamp(-15.0, 15.0)
}

op_codes! {
    /// Unary op codes: `p.op` of the unary entry points (the WGSL's UNARY_* consts).
    enum UnaryCode {
        Neg = 0 => UNARY_NEG,
        Exp = 1 => UNARY_EXP,
        Log = 2 => UNARY_LOG,
        Sqrt = 3 => UNARY_SQRT,
        Rsqrt = 4 => UNARY_RSQRT,
        Silu = 5 => UNARY_SILU,
        Gelu = 6 => UNARY_GELU,
        Relu = 7 => UNARY_RELU,
        Scale = 8 => UNARY_SCALE,
    }
}

impl Unary {
    /// The kernel's op code and scale factor.
    fn code(self) -> (UnaryCode, f32) {
        match self {
            Unary::Neg => (UnaryCode::Neg, 0.0),
            Unary::Exp => (UnaryCode::Exp, 0.0),
            Unary::Log => (UnaryCode::Log, 0.0),
            Unary::Sqrt => (UnaryCode::Sqrt, 0.0),
            Unary::Rsqrt => (UnaryCode::Rsqrt, 0.0),
            Unary::Silu => (UnaryCode::Silu, 0.0),
            Unary::Gelu => (UnaryCode::Gelu, 0.0),
            Unary::Relu => (UnaryCode::Relu, 0.0),
            Unary::Scale(s) => (UnaryCode::Scale, s),
        }
    }

    fn f(self, v: f32) -> f32 {
        match self {
            Unary::Neg => -v,
            Unary::Exp => v.exp(),
            Unary::Log => v.ln(),
            Unary::Sqrt => v.sqrt(),
            Unary::Rsqrt => 1.0 / v.sqrt(),
            Unary::Silu => v / (1.0 + cpu::exp(-v)),
            Unary::Gelu => 0.5 * v * (1.0 + gelu_u(v).tanh()),
            Unary::Relu => v.max(0.0),
            Unary::Scale(s) => s * v,
        }
    }

    /// The profiler's name for this op's backward kernel.
    fn backward_name(self) -> &'static str {
        match self {
            Unary::Neg => "neg_backward",
            Unary::Exp => "exp_backward",
            Unary::Log => "log_backward",
            Unary::Sqrt => "sqrt_backward",
            Unary::Rsqrt => "rsqrt_backward",
            Unary::Silu => "silu_backward",
            Unary::Gelu => "gelu_backward",
            Unary::Relu => "relu_backward",
            Unary::Scale(_) => "scale_backward",
        }
    }

    /// d f / dv
    fn df(self, v: f32) -> f32 {
        match self {
            Unary::Neg => -1.0,
            Unary::Exp => v.exp(),
            Unary::Log => 1.0 / v,
            Unary::Sqrt => 0.5 / v.sqrt(),
            Unary::Rsqrt => -0.5 / v.sqrt() / v,
            Unary::Silu => {
                let s = 1.0 / (1.0 + cpu::exp(-v));
                s * (1.0 + v * (1.0 - s))
            }
            Unary::Gelu => {
                let t = gelu_u(v).tanh();
                0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * v * v)
            }
            Unary::Relu => {
                if v > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Unary::Scale(s) => s,
        }
    }
}

fn unary(name: &'static str, x: &Tensor, op: Unary) -> Result<Tensor> {
    let x = float_input(name, x)?;
    let out = unary_forward(name, &x, op)?;
    let xs = x.clone();
    Ok(record(name, out, &[&x], move |dy| Ok(vec![Some(unary_backward(&xs, dy, op)?)])))
}

fn unary_forward(name: &'static str, x: &Tensor, op: Unary) -> Result<Tensor> {
    let n = x.numel();
    on_device(
        name,
        x.device(),
        || {
            let xr = x.cpu();
            let xv = xr.f32();
            let out = cpu::par_fill_new(n, |i| op.f(xv[i]));
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let (code, s) = op.code();
            let params = ElementwiseParams {
                n: to_u32("unary op", "elements", n)?,
                op: code as u32,
                x_off: to_u32("unary op", "offset", x.offset())?,
                s,
                ..Default::default()
            };
            ctx.dispatch(&KERNEL, "unary", &params, &[x.gpu(), &out], grid_for(n))?;
            Ok(Tensor::from_gpu(out, x.shape(), Precision::FP32))
        },
    )
}

/// dx = dy * f'(x)
fn unary_backward(x: &Tensor, dy: &Tensor, op: Unary) -> Result<Tensor> {
    let n = x.numel();
    let dy = float_input("backward", dy)?;
    on_device(
        op.backward_name(),
        same_device("unary backward", &[x, &dy])?,
        || {
            let (xr, dyr) = (x.cpu(), dy.cpu());
            let (xv, dyv) = (xr.f32(), dyr.f32());
            let out = cpu::par_fill_new(n, |i| dyv[i] * op.df(xv[i]));
            Ok(Tensor::cpu_f32(out, x.shape()))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let (code, s) = op.code();
            let params = ElementwiseParams {
                n: to_u32("unary backward", "elements", n)?,
                op: code as u32,
                x_off: to_u32("unary backward", "offset", x.offset())?,
                y_off: to_u32("unary backward", "dy offset", dy.offset())?,
                s,
                ..Default::default()
            };
            ctx.dispatch(&KERNEL, "unary_backward", &params, &[x.gpu(), &out, dy.gpu()], grid_for(n))?;
            Ok(Tensor::from_gpu(out, x.shape(), Precision::FP32))
        },
    )
}

pub fn neg(x: &Tensor) -> Result<Tensor> {
    unary("neg", x, Unary::Neg)
}
pub fn exp(x: &Tensor) -> Result<Tensor> {
    unary("exp", x, Unary::Exp)
}
pub fn log(x: &Tensor) -> Result<Tensor> {
    unary("log", x, Unary::Log)
}
pub fn sqrt(x: &Tensor) -> Result<Tensor> {
    unary("sqrt", x, Unary::Sqrt)
}
pub fn rsqrt(x: &Tensor) -> Result<Tensor> {
    unary("rsqrt", x, Unary::Rsqrt)
}
/// x * sigmoid(x)
pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary("silu", x, Unary::Silu)
}
/// GELU, tanh approximation (PyTorch's `approximate="tanh"`, GPT-2's gelu_new).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary("gelu", x, Unary::Gelu)
}
pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary("relu", x, Unary::Relu)
}
/// s * x
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    unary("scale", x, Unary::Scale(s))
}

op_codes! {
    /// Binary op codes: `p.op` of the binary entry points (the WGSL's BINARY_* consts).
    enum Binary {
        Add = 0 => BINARY_ADD,
        Sub = 1 => BINARY_SUB,
        Mul = 2 => BINARY_MUL,
        Div = 3 => BINARY_DIV,
    }
}

impl Binary {
    fn f(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
        }
    }
}

/// The output shape when one shape is a suffix of the other.
fn broadcast_shape(name: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if long.ends_with(short) {
        return Ok(long.to_vec());
    }
    bail!(Shape, "{name}: shapes {a:?} and {b:?} do not broadcast (one must be a suffix of the other, like a bias)")
}

fn binary(name: &'static str, a: &Tensor, b: &Tensor, op: Binary) -> Result<Tensor> {
    let (a, b) = (float_input(name, a)?, float_input(name, b)?);
    let device = same_device(name, &[&a, &b])?;
    let shape = broadcast_shape(name, a.shape(), b.shape())?;
    let n = crate::tensor::numel(&shape);
    let (na, nb) = (a.numel().max(1), b.numel().max(1));
    let out = on_device(
        name,
        device,
        || {
            let (ar, br) = (a.cpu(), b.cpu());
            let (av, bv) = (ar.f32(), br.f32());
            let out = cpu::par_fill_new(n, |i| op.f(av[i % na], bv[i % nb]));
            Ok(Tensor::cpu_f32(out, &shape))
        },
        || {
            let ctx = gpu::context()?;
            let out = ctx.alloc(n as u64 * 4);
            let params = ElementwiseParams {
                n: to_u32(name, "elements", n)?,
                op: op as u32,
                x_off: to_u32(name, "offset", a.offset())?,
                y_off: to_u32(name, "offset", b.offset())?,
                nx: to_u32(name, "elements", na)?,
                ny: to_u32(name, "elements", nb)?,
                s: 0.0,
            };
            ctx.dispatch(&KERNEL, "binary", &params, &[a.gpu(), &out, b.gpu()], grid_for(n))?;
            Ok(Tensor::from_gpu(out, &shape, Precision::FP32))
        },
    )?;
    let (sa, sb) = (a.clone(), b.clone());
    Ok(record(name, out, &[&a, &b], move |dy| {
        let (da, db) = match op {
            Binary::Add => (dy.clone(), dy.clone()),
            Binary::Sub => (dy.clone(), neg(dy)?),
            Binary::Mul => (mul(dy, &sb)?, mul(dy, &sa)?),
            // d(a/b)/db = -a / b²
            Binary::Div => (div(dy, &sb)?, neg(&div(&mul(dy, &sa)?, &mul(&sb, &sb)?)?)?),
        };
        Ok(vec![Some(sum_to(&da, sa.shape())?), Some(sum_to(&db, sb.shape())?)])
    }))
}

/// dst = dst ∘ b in place, b repeating over dst as in `add` (its shape a suffix of dst's), without
/// autograd: for backward rules that accumulate into, or rescale, a buffer of their own.
fn binary_into(dst: &Tensor, b: &Tensor, op: Binary) -> Result<()> {
    let b = float_input("binary_into", b)?;
    let device = same_device("binary_into", &[dst, &b])?;
    if dst.dtype() != Precision::FP32 || !dst.shape().ends_with(b.shape()) || dst.shares_storage(&b) {
        bail!(Shape, "binary_into: {:?} must be a separate f32 tensor ending in {:?}", dst.shape(), b.shape());
    }
    let (n, nb) = (dst.numel(), b.numel().max(1));
    on_device(
        "binary_into",
        device,
        || {
            let br = b.cpu();
            let bv = br.f32();
            let mut dw = dst.cpu_mut();
            if nb == 1 {
                dw.f32().par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|o| *o = op.f(*o, bv[0])));
            } else {
                cpu::par_rows(dw.f32(), nb, |_, row| row.iter_mut().zip(bv).for_each(|(o, &v)| *o = op.f(*o, v)));
            }
            Ok(())
        },
        || {
            let ctx = gpu::context()?;
            let max = ctx.max_binding();
            // Pieces of whole rows of b that one binding holds: all of dst unless it (or b, as
            // long as dst) is larger than one binding.
            let len = match [dst.gpu(), b.gpu()].iter().any(|t| t.buffer.size() > max) {
                false => n,
                true => ((max as usize - 256) / 4 / nb * nb).max(nb),
            };
            for first in (0..n).step_by(len.max(1)) {
                let (d, d_off) = gpu::window(dst.offset() + first, 4);
                let ((bb, b_start), b_off) = if nb == n {
                    let (start, off) = gpu::window(b.offset() + first, 4);
                    ((b.gpu(), start), off)
                } else {
                    b.gpu_window("binary_into")?
                };
                let pn = len.min(n - first);
                let params = ElementwiseParams {
                    n: to_u32("binary_into", "elements", pn)?,
                    op: op as u32,
                    x_off: to_u32("binary_into", "offset", b_off)?,
                    y_off: to_u32("binary_into", "destination offset", d_off)?,
                    nx: to_u32("binary_into", "elements", nb.min(pn))?,
                    ..Default::default()
                };
                ctx.dispatch_windows(&KERNEL, "binary_into", &params, &[(bb, b_start), (dst.gpu(), d)], grid_for(pn))?;
            }
            Ok(())
        },
    )
}

pub(crate) fn add_into(dst: &Tensor, b: &Tensor) -> Result<()> {
    binary_into(dst, b, Binary::Add)
}
pub(crate) fn mul_into(dst: &Tensor, b: &Tensor) -> Result<()> {
    binary_into(dst, b, Binary::Mul)
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("add", a, b, Binary::Add)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("sub", a, b, Binary::Sub)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("mul", a, b, Binary::Mul)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary("div", a, b, Binary::Div)
}
