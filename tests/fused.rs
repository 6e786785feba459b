//! Fused ops (SwiGLU, residual add + RMSNorm) on every device: values against plain f64
//! references at odd sizes, finite-difference gradients, the GPU against the CPU, and the same
//! numbers as the unfused chains they replace.

mod common;
use common::{assert_close, f64s, rand_vec, GradCheck};
use irontensor::{ops, Device, Tensor};

fn silu_ref(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

fn rmsnorm_ref(h: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let c = g.len();
    h.chunks(c)
        .flat_map(|row| {
            let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
            row.iter().zip(g).map(move |(v, g)| v * r * g)
        })
        .collect()
}

/// Shapes with 1, 7, 33 and 257 rows, odd widths, and widths of 4-multiples (the GPU kernels'
/// vec4 paths).
fn shapes() -> Vec<Vec<usize>> {
    vec![vec![1, 7], vec![7, 33], vec![33, 5], vec![257, 3], vec![3, 2, 13], vec![1, 257], vec![33, 8], vec![5, 64]]
}

fn swiglu(device: Device) {
    for (seed, shape) in shapes().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let seed = seed as u64;
        GradCheck {
            inputs: vec![
                (rand_vec(n, -4.0, 4.0, seed), shape.clone()),
                (rand_vec(n, -2.0, 2.0, 40 + seed), shape.clone()),
            ],
            op: &|t| ops::swiglu(&t[0], &t[1]),
            reference: &|x| x[0].iter().zip(&x[1]).map(|(&g, &u)| silu_ref(g) * u).collect(),
            atol: 1e-6,
            rtol: 1e-5,
            fd_elems: 200,
        }
        .run(device, &format!("swiglu {shape:?}"));
    }
    // Views at offsets; saturated gates (sigmoid at 0 and 1).
    let g = rand_vec(40, -1.0, 1.0, 5);
    let mut u = rand_vec(40, -1.0, 1.0, 6);
    u[..4].copy_from_slice(&[-100.0, 100.0, -30.0, 30.0]);
    let gt = Tensor::from_f32_on(&[&[-100.0f32, 100.0, -30.0, 30.0][..], &g].concat(), &[44], device).unwrap();
    let ut = Tensor::from_f32_on(&u, &[40], device).unwrap();
    let y = ops::swiglu(&ops::slice(&gt, 0, 3, 33).unwrap(), &ops::slice(&ut, 0, 7, 33).unwrap()).unwrap();
    let gs = [&[30.0f32][..], &g[..32]].concat();
    let want: Vec<f64> = gs.iter().zip(&u[7..40]).map(|(&g, &u)| silu_ref(g as f64) * u as f64).collect();
    assert_close(&y.to_vec(), &want, 1e-6, 1e-5, "swiglu of views");
    let msg = ops::swiglu(&gt, &ut).unwrap_err().to_string();
    assert!(msg.contains("swiglu") && msg.contains("[44]") && msg.contains("[40]"), "{msg}");
    // swiglu_halves: gate and up side by side in each row of one [.., 2F] (the FFN's one matmul),
    // here a view at an odd offset, and at 4 where the width allows vec4s.
    for (seed, shape) in shapes().into_iter().enumerate() {
        let f = *shape.last().unwrap();
        let off = if f % 4 == 0 { 4 } else { 3 };
        let mut wide = shape.clone();
        *wide.last_mut().unwrap() = 2 * f;
        let n: usize = wide.iter().product();
        let x = rand_vec(n + off, -4.0, 4.0, 70 + seed as u64);
        GradCheck {
            inputs: vec![(x, vec![n + off])],
            op: &|t| ops::swiglu_halves(&ops::slice(&t[0], 0, off, n)?.view(&wide)?),
            reference: &|x| x[0][off..].chunks(2 * f).flat_map(|r| (0..f).map(|c| silu_ref(r[c]) * r[f + c])).collect(),
            atol: 1e-6,
            rtol: 1e-5,
            fd_elems: 200,
        }
        .run(device, &format!("swiglu_halves {wide:?}"));
    }
    let msg = ops::swiglu_halves(&ut.view(&[8, 5]).unwrap()).unwrap_err().to_string();
    assert!(msg.contains("swiglu_halves") && msg.contains("[8, 5]"), "{msg}");
}

/// The fused op gives what `mul(silu(gate), up)` gave, forward and backward (bit for bit on
/// the CPU, where both are the same f32 formulas).
fn swiglu_matches_unfused(device: Device) {
    let (rows, f) = (33, 65);
    let mk = |seed, lo, hi| {
        Tensor::from_f32_on(&rand_vec(rows * f, lo, hi, seed), &[rows, f], device).unwrap().requires_grad_()
    };
    let (g, u, w) = (mk(1, -5.0, 5.0), mk(2, -2.0, 2.0), mk(3, -1.0, 1.0).detach());
    let run = |fused: bool| {
        let y = if fused { ops::swiglu(&g, &u).unwrap() } else { ops::mul(&ops::silu(&g).unwrap(), &u).unwrap() };
        let grads = ops::sum_all(&ops::mul(&y, &w).unwrap()).unwrap().backward().unwrap();
        [y.to_vec(), grads.get(&g).unwrap().to_vec(), grads.get(&u).unwrap().to_vec()]
    };
    let (a, b) = (run(true), run(false));
    for (what, (a, b)) in ["y", "dgate", "dup"].iter().zip(a.iter().zip(&b)) {
        if device == Device::Cpu {
            assert_eq!(a, b, "swiglu {what}: fused and unfused differ");
        } else {
            assert_close(a, &f64s(b), 1e-6, 1e-6, &format!("swiglu {what}: fused vs unfused"));
        }
    }
}

fn add_rmsnorm(device: Device) {
    for (seed, shape) in shapes().into_iter().enumerate() {
        let c = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let seed = seed as u64;
        let eps = if seed == 3 { 1e-2 } else { 1e-5 };
        GradCheck {
            inputs: vec![
                (rand_vec(n, -2.0, 2.0, seed), shape.clone()),
                (rand_vec(n, -1.0, 1.0, 20 + seed), shape.clone()),
                (rand_vec(c, 0.5, 1.5, 40 + seed), vec![c]),
            ],
            // Both outputs, h then n, so the loss depends on each.
            op: &|t| {
                let (h, n) = ops::add_rmsnorm(&t[0], &t[1], &t[2], eps)?;
                ops::concat(&[&h, &n], 0)
            },
            reference: &|x| {
                let h: Vec<f64> = x[0].iter().zip(&x[1]).map(|(a, b)| a + b).collect();
                let n = rmsnorm_ref(&h, &x[2], eps as f64);
                [h, n].concat()
            },
            atol: 1e-5,
            rtol: 1e-5,
            fd_elems: 300,
        }
        .run(device, &format!("add_rmsnorm {shape:?}"));
    }
}

/// One output used at a time: only n (the model's final norm), only h (no gamma gradient).
fn add_rmsnorm_one_output(device: Device) {
    let (rows, c) = (7, 33);
    let t = |seed, n, shape: &[usize]| Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, seed), shape, device).unwrap();
    let (x, y, g) = (t(1, rows * c, &[rows, c]), t(2, rows * c, &[rows, c]), t(3, c, &[c]));
    let (x, y, g) = (x.requires_grad_(), y.requires_grad_(), g.requires_grad_());
    let w = t(4, rows * c, &[rows, c]);
    let (_, n) = ops::add_rmsnorm(&x, &y, &g, 1e-5).unwrap();
    let fused = ops::sum_all(&ops::mul(&n, &w).unwrap()).unwrap().backward().unwrap();
    let plain = ops::sum_all(&ops::mul(&ops::rmsnorm(&ops::add(&x, &y).unwrap(), &g, 1e-5).unwrap(), &w).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    for (what, p) in [("dx", &x), ("dy", &y), ("dgamma", &g)] {
        let want = f64s(&plain.get(p).unwrap().to_vec());
        assert_close(&fused.get(p).unwrap().to_vec(), &want, 1e-6, 1e-6, &format!("only n used: {what}"));
    }
    let (h, _) = ops::add_rmsnorm(&x, &y, &g, 1e-5).unwrap();
    let grads = ops::sum_all(&ops::mul(&h, &w).unwrap()).unwrap().backward().unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec(), w.to_vec(), "only h used: dx = the loss's weights");
    assert_eq!(grads.get(&y).unwrap().to_vec(), w.to_vec());
    assert!(grads.get(&g).is_none(), "only h used: gamma gets no gradient");
}

/// Two fused norms chained as in a model (h feeds the next add and its own norm feeds a branch):
/// the same values and gradients as add + rmsnorm (bit for bit on the CPU).
fn add_rmsnorm_matches_unfused(device: Device) {
    let (rows, c) = (33, 37);
    let leaf = |seed, n, shape: &[usize], lo, hi| {
        Tensor::from_f32_on(&rand_vec(n, lo, hi, seed), shape, device).unwrap().requires_grad_()
    };
    let (x, a) = (leaf(1, rows * c, &[rows, c], -2.0, 2.0), leaf(2, rows * c, &[rows, c], -1.0, 1.0));
    let (g1, g2) = (leaf(3, c, &[c], 0.5, 1.5), leaf(4, c, &[c], 0.5, 1.5));
    let w = Tensor::from_f32_on(&rand_vec(rows * c, -1.0, 1.0, 5), &[rows, c], device).unwrap();
    let run = |fused: bool| {
        let (h, n) = if fused {
            ops::add_rmsnorm(&x, &a, &g1, 1e-5).unwrap()
        } else {
            let h = ops::add(&x, &a).unwrap();
            let n = ops::rmsnorm(&h, &g1, 1e-5).unwrap();
            (h, n)
        };
        let m = ops::mul(&ops::silu(&n).unwrap(), &w).unwrap(); // a branch on the norm
        let (_, out) = if fused {
            ops::add_rmsnorm(&h, &m, &g2, 1e-5).unwrap()
        } else {
            let h2 = ops::add(&h, &m).unwrap();
            (h2.clone(), ops::rmsnorm(&h2, &g2, 1e-5).unwrap())
        };
        let grads = ops::sum_all(&ops::mul(&out, &w).unwrap()).unwrap().backward().unwrap();
        let mut v = vec![out.to_vec()];
        v.extend([&x, &a, &g1, &g2].iter().map(|p| grads.get(p).unwrap().to_vec()));
        v
    };
    let (f, u) = (run(true), run(false));
    for (what, (f, u)) in ["out", "dx", "da", "dgamma1", "dgamma2"].iter().zip(f.iter().zip(&u)) {
        if device == Device::Cpu {
            assert_eq!(f, u, "add_rmsnorm {what}: fused and unfused differ");
        } else {
            assert_close(f, &f64s(u), 1e-5, 1e-5, &format!("add_rmsnorm {what}: fused vs unfused"));
        }
    }
}

fn add_rmsnorm_errors(device: Device) {
    let t = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, 1), shape, device).unwrap()
    };
    let msg = ops::add_rmsnorm(&t(&[7, 16]), &t(&[7, 15]), &t(&[16]), 1e-5).unwrap_err().to_string();
    assert!(msg.contains("add_rmsnorm") && msg.contains("[7, 16]") && msg.contains("[7, 15]"), "{msg}");
    let msg = ops::add_rmsnorm(&t(&[7, 16]), &t(&[7, 16]), &t(&[17]), 1e-5).unwrap_err().to_string();
    assert!(msg.contains("add_rmsnorm") && msg.contains("gamma") && msg.contains("[17]"), "{msg}");
    let msg = ops::add_rmsnorm(&t(&[7, 16]), &t(&[7, 16]), &t(&[16]), -1.0).unwrap_err().to_string();
    assert!(msg.contains("add_rmsnorm") && msg.contains("eps"), "{msg}");
}

device_tests!(
    swiglu,
    swiglu_matches_unfused,
    add_rmsnorm,
    add_rmsnorm_one_output,
    add_rmsnorm_matches_unfused,
    add_rmsnorm_errors
);
