//! Every basic op on every device: values against f64 references at odd sizes, gradients
//! against finite differences, the GPU against the CPU, and the errors bad shapes give.

mod common;
use common::{assert_close, f64s, rand_vec, GradCheck};
use irontensor::{ops, Device, Tensor};

type Op1 = fn(&Tensor) -> irontensor::Result<Tensor>;
type Reduce = fn(&[f64]) -> f64;
type Op2 = fn(&Tensor, &Tensor) -> irontensor::Result<Tensor>;

fn unary_ops(device: Device) {
    type F = fn(f64) -> f64;
    let gelu: F = |x| {
        let u = (0.7978845608028654 * (x + 0.044715 * x * x * x)).clamp(-15.0, 15.0);
        0.5 * x * (1.0 + u.tanh())
    };
    let cases: [(&str, Op1, F, f32); 9] = [
        ("neg", ops::neg, |x| -x, -2.0),
        ("exp", ops::exp, f64::exp, -2.0),
        ("log", ops::log, f64::ln, 0.1),
        ("sqrt", ops::sqrt, f64::sqrt, 0.1),
        ("rsqrt", ops::rsqrt, |x| 1.0 / x.sqrt(), 0.1),
        ("silu", ops::silu, |x| x / (1.0 + (-x).exp()), -4.0),
        ("gelu", ops::gelu, gelu, -4.0),
        ("relu", ops::relu, |x| x.max(0.0), -2.0),
        ("scale", |x| ops::scale(x, -1.7), |x| -1.7 * x, -2.0),
    ];
    for (seed, (name, op, f, lo)) in cases.into_iter().enumerate() {
        for shape in [vec![1], vec![7, 33], vec![3, 1, 257]] {
            let n: usize = shape.iter().product();
            let mut x = rand_vec(n, lo, 2.0, seed as u64);
            if name == "relu" {
                x.iter_mut().for_each(|v| {
                    if v.abs() < 1e-3 {
                        *v = 0.5
                    }
                }); // keep away from the kink
            }
            GradCheck {
                inputs: vec![(x, shape.clone())],
                op: &|t| op(&t[0]),
                reference: &|x| x[0].iter().map(|&v| f(v)).collect(),
                atol: 1e-5,
                rtol: 1e-5,
                fd_elems: 40,
            }
            .run(device, name);
        }
    }
}

fn binary_ops(device: Device) {
    type F = fn(f64, f64) -> f64;
    let cases: [(&str, Op2, F); 4] = [
        ("add", ops::add, |a, b| a + b),
        ("sub", ops::sub, |a, b| a - b),
        ("mul", ops::mul, |a, b| a * b),
        ("div", ops::div, |a, b| a / b),
    ];
    // (a shape, b shape): equal, b a bias, a the broadcast one, scalar.
    let shapes = [
        (vec![7, 33], vec![7, 33]),
        (vec![5, 7, 33], vec![33]),
        (vec![5, 7, 33], vec![7, 33]),
        (vec![33], vec![4, 33]),
        (vec![1], vec![1]),
        (vec![6, 5], vec![]),
    ];
    for (seed, (name, op, f)) in cases.into_iter().enumerate() {
        for (sa, sb) in &shapes {
            let (na, nb) = (sa.iter().product::<usize>(), sb.iter().product::<usize>());
            let a = rand_vec(na, -2.0, 2.0, seed as u64);
            let mut b = rand_vec(nb, 0.5, 2.0, 100 + seed as u64);
            b.iter_mut().enumerate().for_each(|(i, v)| {
                if i % 2 == 1 {
                    *v = -*v
                }
            }); // both signs, away from 0
            let n = na.max(nb);
            GradCheck {
                inputs: vec![(a, sa.clone()), (b, sb.clone())],
                op: &|t| op(&t[0], &t[1]),
                reference: &|x| (0..n).map(|i| f(x[0][i % na], x[1][i % nb])).collect(),
                atol: 1e-5,
                rtol: 1e-5,
                fd_elems: 30,
            }
            .run(device, &format!("{name} {sa:?} {sb:?}"));
        }
    }
}

fn reductions(device: Device) {
    for shape in [vec![1], vec![7, 33], vec![3, 1, 257], vec![2, 700]] {
        let n: usize = shape.iter().product();
        let c = *shape.last().unwrap();
        let x = rand_vec(n, -1.0, 1.0, 7);
        let rows = |x: &[f64]| x.chunks(c).map(|r| r.to_vec()).collect::<Vec<_>>();
        let cases: [(&str, Op1, Reduce); 3] = [
            ("sum", ops::sum, |r| r.iter().sum()),
            ("mean", ops::mean, |r| r.iter().sum::<f64>() / r.len() as f64),
            ("max", ops::max, |r| r.iter().cloned().fold(f64::MIN, f64::max)),
        ];
        for (name, op, f) in cases {
            GradCheck {
                inputs: vec![(x.clone(), shape.clone())],
                op: &|t| {
                    let y = op(&t[0])?;
                    assert_eq!(y.shape(), &shape[..shape.len() - 1], "{name} drops the last dim");
                    Ok(y)
                },
                reference: &|x| rows(&x[0]).iter().map(|r| f(r)).collect(),
                atol: 1e-5,
                rtol: 1e-5,
                fd_elems: 50,
            }
            .run(device, &format!("{name} {shape:?}"));
        }
    }
    // Whole-tensor reductions, including sizes past one chunk (two passes).
    for n in [1, 33, 40_000] {
        let x = rand_vec(n, -1.0, 1.0, n as u64);
        let xd = f64s(&x);
        let t = Tensor::from_f32_on(&x, &[n], device).unwrap();
        let s: f64 = xd.iter().sum();
        assert_close(&ops::sum_all(&t).unwrap().to_vec(), &[s], 1e-4, 1e-5, "sum_all");
        assert_close(&ops::mean_all(&t).unwrap().to_vec(), &[s / n as f64], 1e-6, 1e-5, "mean_all");
        let m = xd.iter().cloned().fold(f64::MIN, f64::max);
        assert_close(&ops::max_all(&t).unwrap().to_vec(), &[m], 0.0, 0.0, "max_all");
        assert_eq!(ops::sum_all(&t).unwrap().shape(), &[] as &[usize]);
    }
    let x = rand_vec(12, -1.0, 1.0, 3);
    for (name, op) in
        [("sum_all", ops::sum_all as fn(&Tensor) -> _), ("mean_all", ops::mean_all), ("max_all", ops::max_all)]
    {
        let f: fn(&[f64]) -> f64 = match name {
            "sum_all" => |x| x.iter().sum(),
            "mean_all" => |x| x.iter().sum::<f64>() / x.len() as f64,
            _ => |x| x.iter().cloned().fold(f64::MIN, f64::max),
        };
        GradCheck {
            inputs: vec![(x.clone(), vec![3, 4])],
            op: &|t| op(&t[0])?.view(&[1]),
            reference: &|x| vec![f(&x[0])],
            atol: 1e-5,
            rtol: 1e-5,
            fd_elems: 12,
        }
        .run(device, name);
    }
    // Column sums: [R, C] -> [C], few rows (one pass on the GPU) and many (blocks of rows first),
    // from an offset view; no rows gives zeros.
    for (rows, cols) in [(9, 70), (1000, 3), (67, 129), (5, 64)] {
        let x = rand_vec(5 + rows * cols, -1.0, 1.0, 11);
        let t = Tensor::from_f32_on(&x, &[5 + rows * cols], device).unwrap();
        let t = ops::slice(&t, 0, 5, rows * cols).unwrap().view(&[rows, cols]).unwrap();
        let want: Vec<f64> = (0..cols).map(|c| (0..rows).map(|r| x[5 + r * cols + c] as f64).sum()).collect();
        assert_close(&ops::sum_rows(&t).unwrap().to_vec(), &want, 1e-5, 1e-5, &format!("sum_rows {rows}×{cols}"));
    }
    let empty = Tensor::from_f32_on(&[], &[0, 4], device).unwrap();
    assert_eq!(ops::sum_rows(&empty).unwrap().to_vec(), vec![0.0; 4]);
}

/// C[b] = op(A[b]) · op(B[b]) in f64; batch stride 0 means shared.
#[allow(clippy::too_many_arguments)]
fn matmul_ref(
    a: &[f64],
    b: &[f64],
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    a_bs: usize,
    b_bs: usize,
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for p in 0..k {
                    let av = if ta { a[bi * a_bs + p * m + i] } else { a[bi * a_bs + i * k + p] };
                    let bv = if tb { b[bi * b_bs + j * k + p] } else { b[bi * b_bs + p * n + j] };
                    acc += av * bv;
                }
                c[bi * m * n + i * n + j] = acc;
            }
        }
    }
    c
}

fn matmul(device: Device) {
    for (m, n, k) in [(1, 1, 1), (7, 33, 65), (65, 7, 33), (70, 66, 17)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            // (batch dims of a, of b)
            for (ba, bb) in [(vec![], vec![]), (vec![3], vec![3]), (vec![2, 3], vec![]), (vec![], vec![3])] {
                let sa: Vec<usize> = ba.iter().cloned().chain(if ta { [k, m] } else { [m, k] }).collect();
                let sb: Vec<usize> = bb.iter().cloned().chain(if tb { [n, k] } else { [k, n] }).collect();
                let batch = ba.iter().product::<usize>().max(bb.iter().product());
                let (a_bs, b_bs) = (if ba.is_empty() { 0 } else { m * k }, if bb.is_empty() { 0 } else { k * n });
                let a = rand_vec(sa.iter().product(), -1.0, 1.0, (m * 7 + k) as u64);
                let b = rand_vec(sb.iter().product(), -1.0, 1.0, (n * 5 + k) as u64);
                GradCheck {
                    inputs: vec![(a, sa.clone()), (b, sb.clone())],
                    op: &|t| ops::matmul_t(&t[0], &t[1], ta, tb),
                    reference: &|x| matmul_ref(&x[0], &x[1], batch, m, n, k, ta, tb, a_bs, b_bs),
                    atol: 1e-5,
                    rtol: 1e-4,
                    fd_elems: if m * n * k > 1000 { 6 } else { 20 },
                }
                .run(
                    device,
                    &format!("matmul {sa:?}{} x {sb:?}{}", if ta { "T" } else { "" }, if tb { "T" } else { "" }),
                );
            }
        }
    }
}

fn layout(device: Device) {
    let shape = vec![2, 3, 5, 7];
    let n = 210;
    let x = rand_vec(n, -1.0, 1.0, 5);
    let idx = |i: [usize; 4]| ((i[0] * 3 + i[1]) * 5 + i[2]) * 7 + i[3];
    for perm in [[0, 1, 3, 2], [3, 1, 0, 2], [1, 0, 2, 3]] {
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let reference = |x: &[Vec<f64>]| {
            let mut out = Vec::new();
            for a in 0..out_shape[0] {
                for b in 0..out_shape[1] {
                    for c in 0..out_shape[2] {
                        for d in 0..out_shape[3] {
                            let o = [a, b, c, d];
                            let mut i = [0; 4];
                            for (k, &p) in perm.iter().enumerate() {
                                i[p] = o[k];
                            }
                            out.push(x[0][idx(i)]);
                        }
                    }
                }
            }
            out
        };
        let op = |t: &[Tensor]| {
            if perm == [0, 1, 3, 2] {
                ops::transpose(&t[0])
            } else {
                ops::permute(&t[0], &perm)
            }
        };
        GradCheck {
            inputs: vec![(x.clone(), shape.clone())],
            op: &op,
            reference: &reference,
            atol: 1e-7,
            rtol: 1e-6,
            fd_elems: 20,
        }
        .run(device, &format!("permute {perm:?}"));
    }
    // slice along each dim, then concat pieces back together.
    for dim in 0..4 {
        let (start, len) = (1, shape[dim] - 1);
        let reference = |x: &[Vec<f64>]| {
            let mut out = Vec::new();
            for (f, v) in x[0].iter().enumerate() {
                let i = [f / 105, f / 35 % 3, f / 7 % 5, f % 7];
                if i[dim] >= start && i[dim] < start + len {
                    out.push(*v);
                }
            }
            out
        };
        GradCheck {
            inputs: vec![(x.clone(), shape.clone())],
            op: &|t| ops::slice(&t[0], dim, start, len),
            reference: &reference,
            atol: 1e-7,
            rtol: 1e-6,
            fd_elems: 30,
        }
        .run(device, &format!("slice dim {dim}"));
        let t = Tensor::from_f32_on(&x, &shape, device).unwrap();
        let parts = [ops::slice(&t, dim, 0, 1).unwrap(), ops::slice(&t, dim, 1, len).unwrap()];
        let joined = ops::concat(&[&parts[0], &parts[1]], dim).unwrap();
        assert_eq!(joined.shape(), &shape[..]);
        assert_close(&joined.to_vec(), &f64s(&x), 0.0, 0.0, "concat of slices");
    }
    // concat gradient: three inputs of different lengths along dim 1.
    let (a, b, c) =
        (rand_vec(2 * 3 * 4, -1.0, 1.0, 1), rand_vec(2 * 4, -1.0, 1.0, 2), rand_vec(2 * 5 * 4, -1.0, 1.0, 3));
    let reference = |x: &[Vec<f64>]| {
        let mut out = Vec::new();
        for r in 0..2 {
            for (v, len) in [(&x[0], 3), (&x[1], 1), (&x[2], 5)] {
                out.extend_from_slice(&v[r * len * 4..(r + 1) * len * 4]);
            }
        }
        out
    };
    GradCheck {
        inputs: vec![(a, vec![2, 3, 4]), (b, vec![2, 1, 4]), (c, vec![2, 5, 4])],
        op: &|t| ops::concat(&[&t[0], &t[1], &t[2]], 1),
        reference: &reference,
        atol: 1e-7,
        rtol: 1e-6,
        fd_elems: 40,
    }
    .run(device, "concat");
    // A slice of leading rows shares storage.
    let t = Tensor::from_f32_on(&x, &shape, device).unwrap();
    let s = ops::slice(&t, 0, 1, 1).unwrap();
    assert!(s.shares_storage(&t), "slice along dim 0 should be a view");
    // Leading-dim pieces that lie one after another in one buffer join as a view of it (a
    // model's flat weights), and the gradient still splits between them.
    let w = Tensor::from_f32_on(&rand_vec(7 * 4, -1.0, 1.0, 8), &[7, 4], device).unwrap().requires_grad_();
    let (top, rest) = (ops::slice(&w, 0, 0, 2).unwrap(), ops::slice(&w, 0, 2, 5).unwrap());
    let joined = ops::concat(&[&top, &rest], 0).unwrap();
    assert!(joined.shares_storage(&w), "adjacent pieces should join as a view");
    let g = ops::sum_all(&ops::mul(&joined, &joined).unwrap()).unwrap().backward().unwrap();
    let want: Vec<f64> = f64s(&w.to_vec()).iter().map(|v| 2.0 * v).collect();
    assert_close(&g.get(&w).unwrap().to_vec(), &want, 1e-6, 1e-6, "gradient through a joined view");
    assert_close(&s.to_vec(), &f64s(&x[105..]), 0.0, 0.0, "row slice view");
}

fn cast(device: Device) {
    // Ties round to even, NaN stays NaN, infinities and signed zero survive.
    let mut x = rand_vec(1001, -1e3, 1e3, 9);
    let specials = [
        f32::from_bits(0x3f80_8000), // exactly halfway between two bf16 values: rounds down to even
        f32::from_bits(0x3f81_8000), // halfway: rounds up to even
        f32::from_bits(0x3f80_8001), // just past halfway: rounds up
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MAX, // rounds to infinity
        1e-40,    // subnormal
    ];
    x[..specials.len()].copy_from_slice(&specials);
    x[999] = f32::NAN;
    let t = Tensor::from_f32_on(&x, &[1001], device).unwrap();
    let b = t.to_bf16().unwrap();
    assert_eq!(b.dtype(), irontensor::Precision::BF16);
    let back = b.to_f32().unwrap().to_vec();
    for (i, (&got, &v)) in back.iter().zip(&x).enumerate() {
        let want = half::bf16::from_f32(v).to_f32(); // independent round-to-nearest-even
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "cast element {i}: {v:e} -> {got:e}, expected {want:e}"
        );
    }
    assert_eq!(b.to_vec().len(), 1001);
    // A BF16 view at an odd element offset widens correctly.
    let tail = ops::slice(&b, 0, 3, 10).unwrap().to_f32().unwrap().to_vec();
    assert_eq!(tail, back[3..13].to_vec());
    // Ops on BF16 inputs compute in f32; gradients flow back to the BF16 leaf as f32.
    let w = b.requires_grad_();
    let y = ops::sum_all(&ops::mul(&w, &w).unwrap()).unwrap();
    let g = y.backward().unwrap();
    let gw = g.get(&w).unwrap();
    assert_eq!(gw.dtype(), irontensor::Precision::FP32);
    // Subnormals are left out: GPUs may flush them to zero in arithmetic (NVIDIA does).
    let finite: Vec<usize> = (0..1001).filter(|&i| back[i].is_normal() && back[i].abs() < 1e30).collect();
    let gv = gw.to_vec();
    for i in finite {
        assert_eq!(gv[i], 2.0 * back[i], "d(x²)/dx at {i}");
    }
}

fn errors(device: Device) {
    let a = Tensor::from_f32_on(&[1.0; 6], &[2, 3], device).unwrap();
    let b = Tensor::from_f32_on(&[1.0; 8], &[2, 4], device).unwrap();
    let msg = ops::matmul(&a, &b).unwrap_err().to_string();
    assert!(msg.contains("matmul") && msg.contains("[2, 3]") && msg.contains("[2, 4]"), "{msg}");
    let msg = ops::add(&a, &b).unwrap_err().to_string();
    assert!(msg.contains("add") && msg.contains("[2, 3]") && msg.contains("[2, 4]"), "{msg}");
    let msg = ops::permute(&a, &[0, 0]).unwrap_err().to_string();
    assert!(msg.contains("permute"), "{msg}");
    let msg = ops::slice(&a, 1, 2, 2).unwrap_err().to_string();
    assert!(msg.contains("slice") && msg.contains("[2, 3]"), "{msg}");
    let msg = ops::concat(&[&a, &b], 0).unwrap_err().to_string();
    assert!(msg.contains("concat"), "{msg}");
    let msg = a.view(&[4, 2]).unwrap_err().to_string();
    assert!(msg.contains("view") && msg.contains("[4, 2]"), "{msg}");
    let ids = Tensor::from_u32_on(&[1, 2], &[2], device).unwrap();
    let msg = ops::exp(&ids).unwrap_err().to_string();
    assert!(msg.contains("exp") && msg.contains("u32"), "{msg}");
    let msg = Tensor::from_f32_on(&[1.0; 5], &[2, 3], device).unwrap_err().to_string();
    assert!(msg.contains("5") && msg.contains("[2, 3]"), "{msg}");
}

device_tests!(unary_ops, binary_ops, reductions, matmul, layout, cast, errors);

#[test]
fn mixed_devices_are_an_error() {
    let Some(gpu) = common::gpu() else { return };
    let a = Tensor::from_f32_on(&[1.0; 4], &[4], Device::Cpu).unwrap();
    let b = Tensor::from_f32_on(&[1.0; 4], &[4], gpu).unwrap();
    let msg = ops::add(&a, &b).unwrap_err().to_string();
    assert!(msg.contains("different devices") && msg.contains("to_device"), "{msg}");
    let c = ops::add(&a, &b.to_device(Device::Cpu).unwrap()).unwrap();
    assert_eq!(c.to_vec(), vec![2.0; 4]);
}
