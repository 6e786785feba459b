//! Cross-entropy, plain and fused with the output projection: loss and gradients against f64
//! references, batches the chunk of rows does not divide, ignored rows, BF16 weights, bad
//! targets, and that the fused path never holds the [N, V] logits.

mod common;
use common::{assert_close, rand_vec, GradCheck};
use irontensor::rng::Rng;
use irontensor::{ops, Device, Precision, Result, Tensor};
use std::sync::{Mutex, MutexGuard};

/// Memory peaks are process-wide, so the tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Reference {
    loss: f64,
    dh: Vec<f64>,
    dw: Vec<f64>,
}

/// Mean over rows not ignored of lse(h·wᵀ) - (h·wᵀ)[target], and its gradients, in f64.
/// h: [N, C], w: [V, C].
fn reference(h: &[f64], w: &[f64], t: &[u32], v: usize, ignore: Option<u32>) -> Reference {
    let (n, c) = (t.len(), h.len() / t.len());
    let count = t.iter().filter(|&&x| Some(x) != ignore).count();
    let (mut loss, mut dh, mut dw) = (0.0, vec![0.0; n * c], vec![0.0; v * c]);
    for r in (0..n).filter(|&r| Some(t[r]) != ignore) {
        let hr = &h[r * c..(r + 1) * c];
        let logits: Vec<f64> = (0..v).map(|j| (0..c).map(|k| hr[k] * w[j * c + k]).sum()).collect();
        let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = mx + logits.iter().map(|l| (l - mx).exp()).sum::<f64>().ln();
        loss += lse - logits[t[r] as usize];
        for (j, l) in logits.iter().enumerate() {
            let d = ((l - lse).exp() - if j == t[r] as usize { 1.0 } else { 0.0 }) / count as f64;
            for k in 0..c {
                dh[r * c + k] += d * w[j * c + k];
                dw[j * c + k] += d * hr[k];
            }
        }
    }
    Reference { loss: if count == 0 { 0.0 } else { loss / count as f64 }, dh, dw }
}

/// Random targets in [0, v); every `every`-th row gets `ignore` instead.
fn targets(n: usize, v: usize, ignore: Option<u32>, every: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|r| match ignore {
            Some(i) if r % every == every - 1 => i,
            _ => rng.below(v as u64) as u32,
        })
        .collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Runs `loss_fn(h, w)` with both requiring grad; returns (loss, dh, dw). The backward starts
/// from 4 · loss (as under loss scaling), so that d loss reaches the op as 4, not 1.
fn run(h: &Tensor, w: &Tensor, loss_fn: impl Fn(&Tensor, &Tensor) -> Result<Tensor>) -> (f32, Vec<f32>, Vec<f32>) {
    let (h, w) = (h.requires_grad_(), w.requires_grad_());
    let loss = loss_fn(&h, &w).unwrap();
    assert_eq!(loss.shape(), &[] as &[usize], "the loss is a scalar");
    let g = ops::scale(&loss, 4.0).unwrap().backward().unwrap();
    let dw = g.get(&w).unwrap();
    assert_eq!((dw.shape(), dw.dtype()), (w.shape(), Precision::FP32));
    let quarter = |t: &Tensor| t.to_vec().iter().map(|x| x / 4.0).collect();
    (loss.item().unwrap(), quarter(g.get(&h).unwrap()), quarter(dw))
}

fn check(got: (f32, Vec<f32>, Vec<f32>), want: &Reference, what: &str) {
    assert_close(&[got.0], &[want.loss], 1e-5, 1e-5, &format!("{what} loss"));
    assert_close(&got.1, &want.dh, 1e-6, 1e-4, &format!("{what} dhidden"));
    assert_close(&got.2, &want.dw, 1e-6, 1e-4, &format!("{what} dweight"));
}

fn fused_and_plain_match_reference(device: Device) {
    let _s = serial();
    // (N, V, C, rows a chunk (0: the default), ignore index)
    let minus_100 = Some(-100i32 as u32);
    let cases = [
        (1, 33, 7, 8, None),
        (7, 1000, 33, 3, None),
        (65, 1000, 17, 16, minus_100),
        (65, 33, 33, 0, minus_100),
        (7, 257, 65, 4, Some(3)), // an ignore index inside the vocabulary
        (33, 300, 9, 0, None),
    ];
    for (seed, &(n, v, c, chunk, ignore)) in cases.iter().enumerate() {
        let seed = seed as u64 * 10;
        let (h, w) = (rand_vec(n * c, -1.0, 1.0, seed), rand_vec(v * c, -1.0, 1.0, seed + 1));
        let t = targets(n, v, ignore, 5, seed + 2);
        let want = reference(&f64s(&h), &f64s(&w), &t, v, ignore);
        let ht = Tensor::from_f32_on(&h, &[n, c], device).unwrap();
        let wt = Tensor::from_f32_on(&w, &[v, c], device).unwrap();
        let tt = Tensor::from_u32_on(&t, &[n], device).unwrap();
        let what = format!("N={n} V={v} C={c} chunk={chunk} ignore={ignore:?} on {device:?}");
        let fused = run(&ht, &wt, |h, w| {
            if chunk == 0 {
                ops::fused_linear_cross_entropy(h, w, &tt, ignore)
            } else {
                ops::fused_linear_cross_entropy_chunked(h, w, &tt, ignore, chunk)
            }
        });
        check(fused, &want, &format!("fused {what}"));
        let plain = run(&ht, &wt, |h, w| ops::cross_entropy(&ops::matmul_t(h, w, false, true)?, &tt, ignore));
        check(plain, &want, &format!("materialised {what}"));
    }
}

fn finite_differences(device: Device) {
    let _s = serial();
    let (n, v, c, ignore) = (7, 33, 5, Some(2));
    let t = targets(n, v, ignore, 3, 4);
    // GradCheck also runs the op on the CPU: targets go where the inputs are.
    let tt = |x: &Tensor| Tensor::from_u32_on(&t, &[n], x.device()).unwrap();
    let loss = |x: &[Vec<f64>]| vec![reference(&x[0], &x[1], &t, v, ignore).loss];
    GradCheck {
        inputs: vec![(rand_vec(n * c, -1.0, 1.0, 5), vec![n, c]), (rand_vec(v * c, -1.0, 1.0, 6), vec![v, c])],
        op: &|x| ops::fused_linear_cross_entropy_chunked(&x[0], &x[1], &tt(&x[0]), ignore, 3),
        reference: &loss,
        atol: 1e-5,
        rtol: 1e-5,
        fd_elems: 35,
    }
    .run(device, "fused_linear_cross_entropy");
    // Plain cross-entropy on logits: its reference is the fused one with h = logits, w = I.
    let eye: Vec<f64> = (0..v * v).map(|i| if i / v == i % v { 1.0 } else { 0.0 }).collect();
    GradCheck {
        inputs: vec![(rand_vec(n * v, -3.0, 3.0, 7), vec![n, v])],
        op: &|x| ops::cross_entropy(&x[0], &tt(&x[0]), ignore),
        reference: &|x| vec![reference(&x[0], &eye, &t, v, ignore).loss],
        atol: 1e-5,
        rtol: 1e-5,
        fd_elems: 66,
    }
    .run(device, "cross_entropy");
}

fn all_rows_ignored(device: Device) {
    let _s = serial();
    let (n, v, c) = (7, 40, 6);
    let ht = Tensor::from_f32_on(&rand_vec(n * c, -1.0, 1.0, 8), &[n, c], device).unwrap();
    let wt = Tensor::from_f32_on(&rand_vec(v * c, -1.0, 1.0, 9), &[v, c], device).unwrap();
    let tt = Tensor::from_u32_on(&[7; 7], &[n], device).unwrap();
    let want = Reference { loss: 0.0, dh: vec![0.0; n * c], dw: vec![0.0; v * c] };
    let fused = run(&ht, &wt, |h, w| ops::fused_linear_cross_entropy_chunked(h, w, &tt, Some(7), 3));
    check(fused, &want, "fused, all rows ignored");
    let plain = run(&ht, &wt, |h, w| ops::cross_entropy(&ops::matmul_t(h, w, false, true)?, &tt, Some(7)));
    check(plain, &want, "materialised, all rows ignored");
}

fn bf16_weight(device: Device) {
    let _s = serial();
    let (n, v, c) = (7, 1000, 33);
    let h = rand_vec(n * c, -1.0, 1.0, 11);
    let wt = Tensor::from_f32_on(&rand_vec(v * c, -1.0, 1.0, 12), &[v, c], device).unwrap().to_bf16().unwrap();
    let t = targets(n, v, None, 1, 13);
    let want = reference(&f64s(&h), &f64s(&wt.to_vec()), &t, v, None);
    let ht = Tensor::from_f32_on(&h, &[n, c], device).unwrap();
    let tt = Tensor::from_u32_on(&t, &[n], device).unwrap();
    let got = run(&ht, &wt, |h, w| ops::fused_linear_cross_entropy_chunked(h, w, &tt, None, 3));
    check(got, &want, &format!("fused, bf16 weight, on {device:?}"));
}

fn bad_targets(device: Device) {
    let _s = serial();
    let (n, v, c) = (3, 10, 4);
    let ht = Tensor::from_f32_on(&rand_vec(n * c, -1.0, 1.0, 1), &[n, c], device).unwrap();
    let wt = Tensor::from_f32_on(&rand_vec(v * c, -1.0, 1.0, 2), &[v, c], device).unwrap();
    let logits = ops::matmul_t(&ht, &wt, false, true).unwrap();
    let tt = Tensor::from_u32_on(&[1, 10, 2], &[n], device).unwrap();
    let msg = ops::fused_linear_cross_entropy(&ht, &wt, &tt, None).unwrap_err().to_string();
    assert!(msg.contains("fused_linear_cross_entropy") && msg.contains("10") && msg.contains("row 1"), "{msg}");
    let msg = ops::cross_entropy(&logits, &tt, Some(3)).unwrap_err().to_string();
    assert!(msg.contains("cross_entropy") && msg.contains("10"), "{msg}");
    // The same id is fine as the ignore index.
    let loss = ops::fused_linear_cross_entropy(&ht, &wt, &tt, Some(10)).unwrap();
    assert!(loss.item().unwrap().is_finite());
    // Wrong dtype or length of targets, mismatched C.
    let ft = Tensor::from_f32_on(&[1.0, 2.0, 3.0], &[n], device).unwrap();
    assert!(ops::fused_linear_cross_entropy(&ht, &wt, &ft, None).is_err());
    let short = Tensor::from_u32_on(&[1, 2], &[2], device).unwrap();
    assert!(ops::cross_entropy(&logits, &short, None).is_err());
    let w5 = Tensor::from_f32_on(&rand_vec(v * 5, -1.0, 1.0, 3), &[v, 5], device).unwrap();
    let msg = ops::fused_linear_cross_entropy(&ht, &w5, &tt, None).unwrap_err().to_string();
    assert!(msg.contains("[3, 4]") && msg.contains("[10, 5]"), "{msg}");
}

/// The fused path's peak memory stays well below N·V·4 bytes beyond the gradients it makes;
/// the materialised one does not.
fn fused_never_holds_logits(device: Device) {
    let _s = serial();
    // The default chunk is 2^23 logits: four chunks of 256 rows here.
    let (n, v, c) = (1024, 32768, 4);
    let logits_bytes = (n * v * 4) as u64;
    let h = rand_vec(n * c, -1.0, 1.0, 21);
    let w = rand_vec(v * c, -1.0, 1.0, 22);
    let t = targets(n, v, None, 1, 23);
    let ht = Tensor::from_f32_on(&h, &[n, c], device).unwrap().requires_grad_();
    let wt = Tensor::from_f32_on(&w, &[v, c], device).unwrap().requires_grad_();
    let tt = Tensor::from_u32_on(&t, &[n], device).unwrap();
    let peak_above = |live: u64| device.memory().1 - live;

    let (live, _) = device.memory();
    device.reset_peak_memory();
    let loss = ops::fused_linear_cross_entropy(&ht, &wt, &tt, None).unwrap();
    let value = loss.item().unwrap();
    let grads = loss.backward().unwrap();
    let dw = grads.get(&wt).unwrap().clone();
    // dhidden and dweight are made in the forward; beyond them, a fraction of N·V·4.
    let grad_bytes = ((n + v) * c * 4) as u64;
    let peak = peak_above(live);
    assert!(
        peak < grad_bytes + logits_bytes / 2,
        "fused forward and backward peaked {peak} bytes above the inputs (gradients {grad_bytes}, N·V·4 = {logits_bytes})"
    );
    let want = reference(&f64s(&h), &f64s(&w), &t, v, None);
    assert_close(&[value], &[want.loss], 1e-5, 1e-5, &format!("fused loss at V = {v}"));
    assert_close(&dw.to_vec(), &want.dw, 1e-7, 1e-4, &format!("fused dweight at V = {v}"));
    drop((loss, grads, dw));

    // The measurement can fail: materialising the logits shows up.
    let (live, _) = device.memory();
    device.reset_peak_memory();
    let plain = ops::cross_entropy(&ops::matmul_t(&ht, &wt, false, true).unwrap(), &tt, None).unwrap();
    assert!(plain.item().is_ok());
    assert!(peak_above(live) >= logits_bytes);
}

device_tests!(
    fused_and_plain_match_reference,
    finite_differences,
    all_rows_ignored,
    bf16_weight,
    bad_targets,
    fused_never_holds_logits,
);
