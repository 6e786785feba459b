//! Softmax, materialised attention and FlashAttention on every device: values against f64
//! references, gradients against finite differences and against each other, GQA and causal
//! masks at odd sizes, and the O(T) memory of flash attention.

mod common;
use common::{assert_close, f64s, rand_vec, GradCheck};
use irontensor::{ops, Device, Result, Tensor};
use std::sync::{RwLock, RwLockReadGuard};

/// The memory tests read a process-wide peak, so they run alone (write lock); others share.
static MEMORY: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MEMORY.read().unwrap_or_else(|e| e.into_inner())
}

fn softmax_ref(x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect()
}

fn softmax(device: Device) {
    let _g = shared();
    for (seed, shape) in [vec![1], vec![7, 33], vec![3, 5, 257], vec![2, 1000]].into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let cols = *shape.last().unwrap();
        GradCheck {
            inputs: vec![(rand_vec(n, -4.0, 4.0, seed as u64), shape.clone())],
            op: &|t| ops::softmax(&t[0]),
            reference: &|x| softmax_ref(&x[0], cols),
            atol: 1e-6,
            rtol: 1e-5,
            fd_elems: 40,
        }
        .run(device, &format!("softmax {shape:?}"));
    }
    // Large logits: exp would overflow without subtracting the row max.
    let x = rand_vec(2 * 65, 1000.0, 1010.0, 9);
    let y = ops::softmax(&Tensor::from_f32_on(&x, &[2, 65], device).unwrap()).unwrap();
    assert_close(&y.to_vec(), &softmax_ref(&f64s(&x), 65), 1e-6, 1e-5, "softmax of large logits");
    let msg = ops::softmax(&Tensor::zeros_on(&[3, 0], irontensor::Precision::FP32, device)).unwrap_err().to_string();
    assert!(msg.contains("softmax") && msg.contains("[3, 0]"), "{msg}");
}

/// Sizes of one attention case: q [b, hq, tq, d], k and v [b, hkv, tk, d].
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    hq: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
    causal: bool,
}

impl Case {
    fn new(hq: usize, hkv: usize, t: usize, d: usize, causal: bool) -> Case {
        Case { b: 2, hq, hkv, tq: t, tk: t, d, causal }
    }

    fn shapes(&self) -> [Vec<usize>; 3] {
        let kv = vec![self.b, self.hkv, self.tk, self.d];
        [vec![self.b, self.hq, self.tq, self.d], kv.clone(), kv]
    }

    /// Random q, k, v (seeded by the case).
    fn inputs(&self) -> Vec<(Vec<f32>, Vec<usize>)> {
        let seed = (self.hq * 1000 + self.hkv * 100 + self.tq * 10 + self.d) as u64;
        self.shapes()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (rand_vec(s.iter().product(), -1.0, 1.0, seed + i as u64), s))
            .collect()
    }
}

/// softmax(q·kᵀ/√d + mask)·v as plain f64 loops; query head h reads kv head h / (hq/hkv),
/// and with a causal mask query t sees keys j <= t + tk - tq.
fn attention_ref(c: Case, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let (g, d) = (c.hq / c.hkv, c.d);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; c.b * c.hq * c.tq * d];
    for b in 0..c.b {
        for h in 0..c.hq {
            let kv = (b * c.hkv + h / g) * c.tk;
            for t in 0..c.tq {
                let row = (b * c.hq + h) * c.tq + t;
                let keys = if c.causal { t + c.tk - c.tq + 1 } else { c.tk };
                let s: Vec<f64> = (0..keys)
                    .map(|j| (0..d).map(|e| q[row * d + e] * k[(kv + j) * d + e]).sum::<f64>() * scale)
                    .collect();
                let p = softmax_ref(&s, keys);
                for (j, pj) in p.iter().enumerate() {
                    for e in 0..d {
                        out[row * d + e] += pj * v[(kv + j) * d + e];
                    }
                }
            }
        }
    }
    out
}

type AttnFn = fn(&Tensor, &Tensor, &Tensor, bool) -> Result<Tensor>;

/// The cases both ops are checked on: GQA 4:2 and 4:1 and MHA, T = 1, 7, 65, 70, D = 6, 16, 64, 72,
/// causal and not, and a shorter q than k (causal aligned at the end, as with a KV cache).
fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for causal in [false, true] {
        for (hq, hkv) in [(4, 2), (4, 1), (2, 2)] {
            for t in [1, 7, 65] {
                cases.push(Case::new(hq, hkv, t, 16, causal));
            }
        }
        cases.push(Case::new(4, 2, 7, 64, causal));
        cases.push(Case::new(2, 1, 65, 64, causal));
        cases.push(Case { tk: 12, ..Case::new(4, 2, 7, 16, causal) });
        // Head dims over 64 (the GPU's 128-column kernel) and not a multiple of 4.
        cases.push(Case::new(2, 1, 70, 72, causal));
        cases.push(Case::new(2, 2, 33, 6, causal));
    }
    cases
}

fn check_against_reference(device: Device, name: &str, op: AttnFn) {
    let _g = shared();
    for c in cases() {
        GradCheck {
            inputs: c.inputs(),
            op: &|t| op(&t[0], &t[1], &t[2], c.causal),
            reference: &|x| attention_ref(c, &x[0], &x[1], &x[2]),
            atol: 1e-5,
            rtol: 1e-4,
            fd_elems: if c.tq * c.d > 500 { 6 } else { 16 },
        }
        .run(device, &format!("{name} {c:?}"));
    }
}

fn attention(device: Device) {
    check_against_reference(device, "attention", ops::attention);
}

fn flash_attention(device: Device) {
    check_against_reference(device, "flash_attention", ops::flash_attention);
}

/// Output and dq, dk, dv of `op` for loss Σ w·out.
fn run_with_grads(op: AttnFn, c: Case, device: Device) -> Vec<Vec<f32>> {
    let ts: Vec<Tensor> =
        c.inputs().iter().map(|(v, s)| Tensor::from_f32_on(v, s, device).unwrap().requires_grad_()).collect();
    let out = op(&ts[0], &ts[1], &ts[2], c.causal).unwrap();
    let w = Tensor::from_f32_on(&rand_vec(out.numel(), -1.0, 1.0, 5), out.shape(), device).unwrap();
    let grads = ops::sum_all(&ops::mul(&out, &w).unwrap()).unwrap().backward().unwrap();
    let mut all = vec![out.to_vec()];
    all.extend(ts.iter().map(|t| grads.get(t).unwrap().to_vec()));
    all
}

/// Flash against the materialised op, forward and all three gradients, at sizes that cross
/// several CPU and GPU tiles (CPU blocks are 64; GPU blocks of 64 rows, key tiles of 64 and query
/// tiles of 32 in dK/dV, chunks of 16 columns).
fn flash_vs_materialised(device: Device) {
    let _g = shared();
    let mut cases = vec![
        Case::new(4, 2, 65, 64, true),
        Case::new(4, 1, 33, 16, false),
        Case { tk: 70, ..Case::new(2, 2, 33, 16, true) },
        Case { tk: 100, ..Case::new(2, 1, 70, 72, true) },
    ];
    cases.push(Case::new(4, 2, 200, 32, true));
    cases.push(Case::new(2, 1, 130, 16, false));
    for c in cases {
        let flash = run_with_grads(ops::flash_attention, c, device);
        let reference = run_with_grads(ops::attention, c, device);
        for (what, (f, r)) in ["out", "dq", "dk", "dv"].iter().zip(flash.iter().zip(&reference)) {
            assert_close(f, &f64s(r), 2e-5, 1e-4, &format!("flash vs attention {what} {c:?} on {device:?}"));
        }
        if device == Device::Cpu {
            let again = run_with_grads(ops::flash_attention, c, device);
            assert_eq!(flash, again, "flash_attention on the CPU is deterministic");
        }
    }
}

/// Peak bytes of `device` tensors above what was live, over forward + backward of `op`.
fn peak_bytes(op: AttnFn, device: Device, shape: [usize; 4], causal: bool) -> u64 {
    let n: usize = shape.iter().product();
    let mk = |seed| Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, seed), &shape, device).unwrap();
    let (q, k, v, w) = (mk(1).requires_grad_(), mk(2).requires_grad_(), mk(3).requires_grad_(), mk(4));
    device.reset_peak_memory();
    let (live, _) = device.memory();
    let out = op(&q, &k, &v, causal).unwrap();
    let grads = ops::sum_all(&ops::mul(&out, &w).unwrap()).unwrap().backward().unwrap();
    for t in [&q, &k, &v] {
        assert!(grads.get(t).unwrap().to_vec()[0].is_finite());
    }
    device.memory().1 - live
}

/// Flash attention's forward + backward stays below one T×T f32 buffer, where the
/// materialised op (checked too, so the meter is seen to work) needs several.
fn flash_memory(device: Device) {
    let _g = MEMORY.write().unwrap_or_else(|e| e.into_inner());
    let t = if device == Device::Cpu { 1024 } else { 512 };
    let tt = (t * t * 4) as u64;
    for causal in [false, true] {
        let flash = peak_bytes(ops::flash_attention, device, [1, 1, t, 16], causal);
        let mat = peak_bytes(ops::attention, device, [1, 1, t, 16], causal);
        assert!(flash < tt / 2, "flash_attention peak {flash} bytes, T×T is {tt}");
        assert!(mat > tt, "attention peak {mat} bytes should exceed T×T = {tt}");
    }
}

/// [b, h, t, d] <-> [b, t, h, d] on the host (`dims` as the data is laid out).
fn swap_ht(x: &[f32], [_, h, t, d]: [usize; 4]) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (i, &v) in x.iter().enumerate() {
        let (bi, hi, ti, di) = (i / (h * t * d), i / (t * d) % h, i / d % t, i % d);
        out[((bi * t + ti) * h + hi) * d + di] = v;
    }
    out
}

/// flash_attention_bthd against flash_attention on the same data laid out [B, H, T, D]: output
/// and the three gradients, and the output without gradients (the GPU reads the [B, T, H, D]
/// layout directly; the CPU does so for inference).
fn flash_bthd(device: Device) {
    let _g = shared();
    let cases = [
        Case::new(4, 2, 65, 64, true),
        Case { tk: 70, ..Case::new(2, 1, 33, 72, true) },
        Case::new(4, 4, 7, 16, false),
        Case { tk: 12, ..Case::new(2, 1, 1, 8, false) },
        Case { tk: 9, ..Case::new(4, 2, 1, 16, true) },
    ];
    for c in cases {
        let reference = run_with_grads(ops::flash_attention, c, device);
        let dims = [[c.b, c.hq, c.tq, c.d], [c.b, c.hkv, c.tk, c.d], [c.b, c.hkv, c.tk, c.d]];
        let ts: Vec<Tensor> = c
            .inputs()
            .iter()
            .zip(dims)
            .map(|((v, _), [b, h, t, d])| {
                Tensor::from_f32_on(&swap_ht(v, [b, h, t, d]), &[b, t, h, d], device).unwrap().requires_grad_()
            })
            .collect();
        let out = ops::flash_attention_bthd(&ts[0], &ts[1], &ts[2], c.causal).unwrap();
        assert_eq!(out.shape(), &[c.b, c.tq, c.hq, c.d]);
        // Without gradients the CPU reads the layout directly when Tq = 1 (decoding): the same result.
        let plain = irontensor::no_grad(|| ops::flash_attention_bthd(&ts[0], &ts[1], &ts[2], c.causal)).unwrap();
        let what = format!("flash_attention_bthd without grad {c:?} on {device:?}");
        assert_close(&swap_ht(&plain.to_vec(), [c.b, c.tq, c.hq, c.d]), &f64s(&reference[0]), 1e-6, 1e-5, &what);
        let w = swap_ht(&rand_vec(out.numel(), -1.0, 1.0, 5), dims[0]);
        let w = Tensor::from_f32_on(&w, out.shape(), device).unwrap();
        let grads = ops::sum_all(&ops::mul(&out, &w).unwrap()).unwrap().backward().unwrap();
        let mut got = vec![out.to_vec()];
        got.extend(ts.iter().map(|t| grads.get(t).unwrap().to_vec()));
        for (i, (what, (g, r))) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(&reference)).enumerate() {
            let [b, h, t, d] = dims[i.max(1) - 1];
            let g = swap_ht(g, [b, t, h, d]);
            assert_close(&g, &f64s(r), 1e-6, 1e-5, &format!("flash_attention_bthd {what} {c:?} on {device:?}"));
        }
    }
    let t = |s: &[usize]| Tensor::from_f32_on(&vec![0.0; s.iter().product()], s, device).unwrap();
    let msg = ops::flash_attention_bthd(&t(&[2, 4, 8]), &t(&[1, 4, 2, 8]), &t(&[1, 4, 2, 8]), true).unwrap_err();
    assert!(msg.to_string().contains("[B, T, Hq, D]"), "{msg}");
}

fn errors(device: Device) {
    let _g = shared();
    let t = |s: &[usize]| Tensor::from_f32_on(&rand_vec(s.iter().product(), -1.0, 1.0, 1), s, device).unwrap();
    let (q, k) = (t(&[1, 3, 4, 8]), t(&[1, 2, 4, 8]));
    for op in [ops::attention as AttnFn, ops::flash_attention] {
        let msg = op(&q, &k, &k, false).unwrap_err().to_string();
        assert!(msg.contains("attention") && msg.contains("multiple"), "{msg}");
        let msg = op(&t(&[1, 2, 4, 8]), &t(&[1, 2, 4, 6]), &t(&[1, 2, 4, 6]), false).unwrap_err().to_string();
        assert!(msg.contains("[1, 2, 4, 6]"), "{msg}");
        let msg = op(&t(&[1, 2, 5, 8]), &k, &k, true).unwrap_err().to_string();
        assert!(msg.contains("causal"), "{msg}");
        let msg = op(&t(&[2, 4, 8]), &k, &k, true).unwrap_err().to_string();
        assert!(msg.contains("[B, Hq, T, D]"), "{msg}");
    }
    if device == Device::Gpu {
        let big = t(&[1, 1, 2, 129]);
        let msg = ops::flash_attention(&big, &big, &big, false).unwrap_err().to_string();
        assert!(msg.contains("128"), "{msg}");
    }
}

device_tests!(softmax, attention, flash_attention, flash_vs_materialised, flash_bthd, flash_memory, errors);

/// Peak CPU memory of materialised vs flash attention, forward + backward, B=1, H=4, D=64, causal.
/// `cargo test --release --test attention -- --ignored --nocapture memory_report`
#[test]
#[ignore = "prints a measurement; run with --ignored --nocapture"]
fn memory_report() {
    let _g = MEMORY.write().unwrap_or_else(|e| e.into_inner());
    for t in [1024, 4096] {
        for (name, op) in [("attention", ops::attention as AttnFn), ("flash_attention", ops::flash_attention)] {
            let start = std::time::Instant::now();
            let peak = peak_bytes(op, Device::Cpu, [1, 4, t, 64], true);
            println!(
                "T={t:5} {name:16} peak {:9.2} MiB  ({:.1} s)",
                peak as f64 / (1 << 20) as f64,
                start.elapsed().as_secs_f64()
            );
        }
    }
}
