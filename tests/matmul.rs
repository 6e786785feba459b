//! matmul_t on every device against an f64 reference: the four transpose combinations, odd sizes and
//! exact tile multiples, batched and broadcast operands, views at offsets, gradients; and the opt-in
//! f16 cooperative-matrix path where the GPU has one (skipped, with a message, elsewhere).

mod common;
use common::{assert_close, rand_vec, GradCheck};
use irontensor::{ops, Device, MatmulPrecision, Tensor};
use std::sync::{Mutex, MutexGuard};

/// The matmul precision is process-wide: every test here holds this lock while it multiplies.
static PRECISION: Mutex<()> = Mutex::new(());

fn precision_lock() -> MutexGuard<'static, ()> {
    PRECISION.lock().unwrap_or_else(|e| e.into_inner())
}

/// The GPU and the precision lock for a test of the f16 cooperative path, or None (with a message
/// naming `test`) where the GPU has no such matrices.
fn coop_gpu(test: &str) -> Option<(Device, MutexGuard<'static, ()>)> {
    let device = common::gpu()?;
    if !ops::coop_matmul_supported() {
        eprintln!("{test} skipped: this GPU has no 16×16 f16 cooperative matrices");
        assert!(ops::set_matmul_precision(MatmulPrecision::F16).is_err());
        return None;
    }
    Some((device, precision_lock()))
}

const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// op(A)[.., M, K] · op(B)[.., K, N], each operand a view at an element offset of its storage.
#[derive(Clone, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    batch_a: Vec<usize>,
    batch_b: Vec<usize>,
    off_a: usize,
    off_b: usize,
}

impl Case {
    fn new(m: usize, n: usize, k: usize, (ta, tb): (bool, bool)) -> Case {
        Case { m, n, k, ta, tb, batch_a: vec![], batch_b: vec![], off_a: 0, off_b: 0 }
    }

    fn shape_a(&self) -> Vec<usize> {
        let mk = if self.ta { [self.k, self.m] } else { [self.m, self.k] };
        self.batch_a.iter().copied().chain(mk).collect()
    }

    fn shape_b(&self) -> Vec<usize> {
        let kn = if self.tb { [self.n, self.k] } else { [self.k, self.n] };
        self.batch_b.iter().copied().chain(kn).collect()
    }

    fn batch(&self) -> usize {
        self.batch_a.iter().product::<usize>().max(self.batch_b.iter().product())
    }

    /// C in f64; a 2-D operand is shared across the other's batch.
    fn reference(&self, a: &[f64], b: &[f64]) -> Vec<f64> {
        let (m, n, k) = (self.m, self.n, self.k);
        let a_bs = if self.batch_a.is_empty() { 0 } else { m * k };
        let b_bs = if self.batch_b.is_empty() { 0 } else { k * n };
        let mut c = vec![0.0; self.batch() * m * n];
        for bi in 0..self.batch() {
            let (a, b) = (&a[bi * a_bs..], &b[bi * b_bs..]);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0;
                    for p in 0..k {
                        let av = if self.ta { a[p * m + i] } else { a[i * k + p] };
                        let bv = if self.tb { b[j * k + p] } else { b[p * n + j] };
                        acc += av * bv;
                    }
                    c[(bi * m + i) * n + j] = acc;
                }
            }
        }
        c
    }

    /// Random operands in [-1, 1), the device's C and the f64 reference of `round(a)·round(b)`.
    fn eval(&self, device: Device, seed: u64, round: fn(f32) -> f64) -> (Vec<f32>, Vec<f64>) {
        let (sa, sb) = (self.shape_a(), self.shape_b());
        let (na, nb) = (sa.iter().product::<usize>(), sb.iter().product::<usize>());
        let a = rand_vec(self.off_a + na, -1.0, 1.0, seed);
        let b = rand_vec(self.off_b + nb, -1.0, 1.0, seed + 1);
        let view = |v: &[f32], off: usize, n: usize, shape: &[usize]| {
            let storage = Tensor::from_f32_on(v, &[v.len()], device).unwrap();
            ops::slice(&storage, 0, off, n).unwrap().view(shape).unwrap()
        };
        let (ta, tb) = (view(&a, self.off_a, na, &sa), view(&b, self.off_b, nb, &sb));
        let c = ops::matmul_t(&ta, &tb, self.ta, self.tb).unwrap();
        let mut out_shape =
            if self.batch_a.len() >= self.batch_b.len() { &self.batch_a } else { &self.batch_b }.clone();
        out_shape.extend([self.m, self.n]);
        assert_eq!(c.shape(), out_shape, "{self:?}");
        let r = |v: &[f32]| v.iter().map(|&x| round(x)).collect::<Vec<f64>>();
        (c.to_vec(), self.reference(&r(&a[self.off_a..]), &r(&b[self.off_b..])))
    }

    /// Checks C against the reference, allowing f32 rounding that grows with K.
    fn check(&self, device: Device, seed: u64) {
        let (got, want) = self.eval(device, seed, |x| x as f64);
        assert_close(&got, &want, 2e-6 * self.k as f64 + 1e-6, 1e-5, &format!("matmul {self:?} on {device:?}"));
    }
}

fn sizes(device: Device) {
    let _lock = precision_lock();
    // (M, N, K): 1, 7, 33, 65, 127, 129, 257 on every side; 128 and 256 fill whole 128×128 tiles
    // (and 128×256 ones of the wide kernel), alone and with K not a multiple of the K steps of 8
    // and 16 (13, 257, 9).
    let shapes = [
        (1, 1, 1),
        (1, 257, 33),
        (257, 1, 65),
        (7, 129, 127),
        (129, 7, 257),
        (33, 65, 7),
        (65, 33, 1),
        (127, 129, 129),
        (128, 128, 128),
        (256, 128, 64),
        (128, 256, 13),
        (256, 256, 257),
        (257, 127, 9),
    ];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        for (j, t) in TRANSPOSES.into_iter().enumerate() {
            Case::new(m, n, k, t).check(device, (i * 4 + j) as u64);
        }
    }
    // The largest GPU test shape: 4×4 tiles (4×2 wide ones), all interior.
    Case::new(512, 512, 96, (false, true)).check(device, 99);
}

/// Dims and offsets all multiples of 4 take the GPU's vec4 path; a long K over few output tiles
/// is split (split-K) and the partial products summed.
fn aligned_and_split(device: Device) {
    let _lock = precision_lock();
    let shapes = [(4, 8, 12), (132, 260, 36), (132, 68, 20), (256, 128, 4), (36, 20, 1028), (128, 4, 2048)];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        for (j, t) in TRANSPOSES.into_iter().enumerate() {
            Case::new(m, n, k, t).check(device, 200 + (i * 4 + j) as u64);
            let case = Case { off_a: 4, off_b: 8, batch_a: vec![3], ..Case::new(m, n, k, t) };
            case.check(device, 300 + (i * 4 + j) as u64);
            let case = Case { batch_a: vec![2], batch_b: vec![2], ..Case::new(m, n, k, t) };
            case.check(device, 400 + (i * 4 + j) as u64);
        }
    }
}

fn batched(device: Device) {
    let _lock = precision_lock();
    for (i, (m, n, k)) in [(33, 65, 129), (128, 128, 16), (7, 1, 33)].into_iter().enumerate() {
        for (j, t) in TRANSPOSES.into_iter().enumerate() {
            // (batch dims of A, of B): both batched, B shared (a weight), A shared.
            for (l, (ba, bb)) in [(vec![3], vec![3]), (vec![2, 3], vec![]), (vec![], vec![3])].into_iter().enumerate() {
                let case = Case { batch_a: ba, batch_b: bb, ..Case::new(m, n, k, t) };
                case.check(device, (i * 100 + j * 10 + l) as u64);
            }
        }
    }
}

fn offsets(device: Device) {
    let _lock = precision_lock();
    // Odd element offsets: nothing may assume aligned operands.
    for (j, t) in TRANSPOSES.into_iter().enumerate() {
        let case = Case { off_a: 3, off_b: 13, batch_a: vec![2], ..Case::new(129, 65, 33, t) };
        case.check(device, 50 + j as u64);
        let case = Case { off_a: 1, off_b: 130, batch_b: vec![2], ..Case::new(128, 128, 24, t) };
        case.check(device, 60 + j as u64);
    }
}

/// Products of a few rows times a [N, K] weight (decoding) take the GPU's kernel for them where K
/// and the offsets are multiples of 4, and the tiled kernels otherwise.
fn few_rows(device: Device) {
    let _lock = precision_lock();
    let shapes = [(1, 1, 4), (1, 257, 36), (3, 1001, 132), (8, 77, 1028), (5, 33, 4100), (2, 65, 35), (9, 129, 20)];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        Case::new(m, n, k, (false, true)).check(device, 500 + i as u64);
        let case = Case { off_a: 4, off_b: 64, ..Case::new(m, n, k, (false, true)) };
        case.check(device, 600 + i as u64);
        let case = Case { off_a: 3, off_b: 5, ..Case::new(m, n, k, (false, true)) };
        case.check(device, 700 + i as u64);
    }
}

fn gradients(device: Device) {
    let _lock = precision_lock();
    // Across tile edges, batched with a shared B: dA and dB are matmuls with other transposes.
    for (j, (ta, tb)) in TRANSPOSES.into_iter().enumerate() {
        let case = Case { batch_a: vec![2], ..Case::new(129, 33, 65, (ta, tb)) };
        let (sa, sb) = (case.shape_a(), case.shape_b());
        let a = rand_vec(sa.iter().product(), -1.0, 1.0, 70 + j as u64);
        let b = rand_vec(sb.iter().product(), -1.0, 1.0, 80 + j as u64);
        GradCheck {
            inputs: vec![(a, sa), (b, sb)],
            op: &|t| ops::matmul_t(&t[0], &t[1], ta, tb),
            reference: &|x| case.reference(&x[0], &x[1]),
            atol: 2e-4,
            rtol: 1e-4,
            fd_elems: 4,
        }
        .run(device, &format!("matmul gradients {case:?}"));
    }
}

fn errors(device: Device) {
    let a = Tensor::from_f32_on(&[1.0; 12], &[2, 2, 3], device).unwrap();
    let b = Tensor::from_f32_on(&[1.0; 18], &[3, 3, 2], device).unwrap();
    let msg = ops::matmul(&a, &b).unwrap_err().to_string();
    assert!(msg.contains("matmul") && msg.contains("[2, 2, 3]") && msg.contains("[3, 3, 2]"), "{msg}");
    let msg = ops::matmul_t(&a, &b, true, false).unwrap_err().to_string();
    assert!(msg.contains("matmul") && msg.contains("[2, 2, 3]ᵀ"), "{msg}");
}

device_tests!(sizes, aligned_and_split, batched, offsets, few_rows, gradients, errors);

/// f16's rounding of an f32 (round to nearest even), as the cooperative kernel rounds its inputs.
fn to_f16(x: f32) -> f64 {
    half::f16::from_f32(x).to_f64()
}

/// The f16 cooperative-matrix path (`MatmulPrecision::F16`), where the GPU has one: against the f64
/// product of the f16-rounded inputs, which differs from the exact one.
#[test]
fn coop_f16() {
    let Some((device, _lock)) = coop_gpu("coop_f16") else { return };
    ops::set_matmul_precision(MatmulPrecision::F16).unwrap();
    let mut cases = Vec::new();
    for t in TRANSPOSES {
        for (m, n, k) in [
            (1, 1, 1),
            (7, 33, 65),
            (129, 257, 127),
            (128, 256, 64),
            (256, 512, 48),
            (257, 255, 17),
            (128, 258, 32),
            (256, 260, 24),
            (64, 96, 1536), // few tiles, long K: split-K
            (36, 132, 1028),
        ] {
            cases.push(Case::new(m, n, k, t));
        }
        cases.push(Case { batch_a: vec![2, 3], off_a: 3, off_b: 5, ..Case::new(65, 129, 33, t) });
        cases.push(Case { batch_b: vec![3], ..Case::new(128, 256, 32, t) });
        cases.push(Case { batch_a: vec![3], batch_b: vec![3], ..Case::new(130, 250, 40, t) });
    }
    let mut rounded = false;
    for (i, case) in cases.iter().enumerate() {
        let (got, want) = case.eval(device, 200 + i as u64, to_f16);
        assert_close(&got, &want, 4e-6 * case.k as f64 + 1e-5, 1e-5, &format!("coop matmul {case:?}"));
        let (_, exact) = case.eval(device, 200 + i as u64, |x| x as f64);
        rounded |= got.iter().zip(&exact).any(|(&g, &e)| (g as f64 - e).abs() > 1e-4);
    }
    ops::set_matmul_precision(MatmulPrecision::FP32).unwrap();
    assert!(rounded, "the F16 precision gave f32 results: the cooperative kernel did not run");
    // Back on FP32, products are exact to f32 again.
    Case::new(129, 257, 127, (false, false)).check(device, 300);
}

/// The fused cross-entropy with f16 matmuls: its gradients (made in the forward) against the
/// FP32 path's (tested against f64 in tests/cross_entropy.rs). With N = 8192 rows, d logits
/// scaled by the mean's 1/N before their products sit under f16's normal range: an earlier
/// version did that, and its relative error here was 1.4e-2 (now 2.2e-4, on an H100).
#[test]
fn coop_f16_cross_entropy() {
    let Some((device, _lock)) = coop_gpu("coop_f16_cross_entropy") else { return };
    let (n, v, c) = (8192, 4096, 16);
    let ht = Tensor::from_f32_on(&rand_vec(n * c, -1.0, 1.0, 41), &[n, c], device).unwrap().requires_grad_();
    let wt = Tensor::from_f32_on(&rand_vec(v * c, -1.0, 1.0, 42), &[v, c], device).unwrap().requires_grad_();
    let t: Vec<u32> = rand_vec(n, 0.0, v as f32, 43).iter().map(|&x| (x as u32).min(v as u32 - 1)).collect();
    let tt = Tensor::from_u32_on(&t, &[n], device).unwrap();
    let grads = |precision| {
        ops::set_matmul_precision(precision).unwrap();
        let loss = ops::fused_linear_cross_entropy(&ht, &wt, &tt, None).unwrap();
        let g = ops::scale(&loss, 1024.0).unwrap().backward().unwrap(); // as under loss scaling
        [g.get(&ht).unwrap().to_vec(), g.get(&wt).unwrap().to_vec()]
    };
    let (f32s, f16s) = (grads(MatmulPrecision::FP32), grads(MatmulPrecision::F16));
    ops::set_matmul_precision(MatmulPrecision::FP32).unwrap();
    for (what, (want, got)) in ["d hidden", "d weight"].iter().zip(f32s.iter().zip(&f16s)) {
        let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
        let err = norm(&mut want.iter().zip(got).map(|(&a, &b)| (a - b) as f64));
        let rel = err / norm(&mut want.iter().map(|&a| a as f64));
        assert!(rel < 2e-3, "{what} with f16 matmuls: relative error {rel:e} against FP32");
    }
}

/// Training with f16 matmuls: the trainer scales the loss (dynamic loss scaling), so a tiny model
/// learns as it does with FP32 matmuls; without it the gradients underflow f16 and it stalls.
#[test]
fn coop_f16_training() {
    use irontensor::nn::ModelConfig;
    use irontensor::train::{Trainer, TrainingConfig};
    let Some((device, _lock)) = coop_gpu("coop_f16_training") else { return };
    let model = ModelConfig {
        vocab_size: 64,
        hidden_dim: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 128,
        max_seq_len: 64,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: irontensor::Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    };
    let text = std::fs::read(common::SHAKESPEARE).unwrap();
    let ids: Vec<u32> = text[..64 * 33 * 40].iter().map(|&b| b as u32 % 64).collect();
    let mut curves = Vec::new();
    for precision in [MatmulPrecision::FP32, MatmulPrecision::F16] {
        ops::set_matmul_precision(precision).unwrap();
        let cfg = TrainingConfig { learning_rate: 3e-3, total_steps: 40, warmup_steps: 5, ..Default::default() };
        let mut t = Trainer::new_on(model.clone(), cfg, device).unwrap();
        let batch = |s: usize| -> (Vec<u32>, Vec<u32>) {
            let w = &ids[s * 64 * 33..(s + 1) * 64 * 33];
            w.chunks(33).flat_map(|r| r[..32].iter().zip(&r[1..]).map(|(&a, &b)| (a, b))).unzip()
        };
        let curve: Vec<f32> = (0..39)
            .map(|s| {
                let (x, y) = batch(s);
                t.train_step(&x, &y, 64, 32).unwrap().0
            })
            .collect();
        // A checkpoint keeps the loss scale too: the resumed trainer takes the same last step.
        let dir = std::env::temp_dir().join(format!("irontensor-coop-{}-{precision:?}", std::process::id()));
        t.save_checkpoint(&dir).unwrap();
        let mut resumed = Trainer::load_checkpoint(&dir, device).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let (x, y) = batch(39);
        let (last, again) = (t.train_step(&x, &y, 64, 32).unwrap().0, resumed.train_step(&x, &y, 64, 32).unwrap().0);
        assert_eq!(last.to_bits(), again.to_bits(), "{precision:?}: the resumed step differs");
        curves.push([curve, vec![last]].concat());
    }
    ops::set_matmul_precision(MatmulPrecision::FP32).unwrap();
    let (f, h) = (&curves[0], &curves[1]);
    assert!(f[39] < f[0] - 0.5, "fp32 should learn: {} -> {}", f[0], f[39]);
    let tail = |c: &[f32]| c[30..].iter().sum::<f32>() / 10.0;
    assert!((tail(h) - tail(f)).abs() < 0.05 * tail(f), "f16 matmuls: last losses {} vs fp32 {}", tail(h), tail(f));
}

/// FlashAttention with f16 matmuls runs on cooperative matrices (head dims up to 128): output and
/// the three gradients against the FP32 kernels' (tested against f64 in tests/attention.rs), in
/// both layouts, with GQA, causal masks (also with fewer queries than keys), edge tiles and padded
/// head dims.
#[test]
fn coop_f16_attention() {
    let Some((device, _lock)) = coop_gpu("coop_f16_attention") else { return };
    // (batch, query heads, kv heads, queries, keys, head dim, causal, [B, T, H, D] layout)
    let cases = [
        (2, 4, 2, 65, 65, 64, true, false),
        (2, 4, 2, 200, 200, 32, true, true),
        (1, 2, 1, 33, 70, 16, true, false),
        (2, 2, 2, 130, 130, 64, false, true),
        (1, 3, 1, 47, 47, 8, false, false),
        (2, 6, 6, 256, 256, 64, true, true),
        // Head dims over 64: the kernel at 128, padded below it.
        (1, 4, 2, 128, 128, 128, true, false),
        (2, 2, 1, 70, 90, 96, true, true),
        (1, 3, 3, 150, 150, 80, false, false),
        (1, 2, 2, 64, 64, 128, false, true),
        (1, 4, 1, 97, 97, 112, true, true),
    ];
    for (i, &(b, hq, hkv, tq, tk, d, causal, bthd)) in cases.iter().enumerate() {
        let shape = |h, t| if bthd { vec![b, t, h, d] } else { vec![b, h, t, d] };
        let shapes = [shape(hq, tq), shape(hkv, tk), shape(hkv, tk)];
        let seed = 500 + 10 * i as u64;
        let inputs: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let x = rand_vec(s.iter().product(), -1.0, 1.0, seed + j as u64);
                Tensor::from_f32_on(&x, s, device).unwrap().requires_grad_()
            })
            .collect();
        let w = Tensor::from_f32_on(&rand_vec(b * hq * tq * d, -1.0, 1.0, seed + 5), &shapes[0], device).unwrap();
        let run = |precision| {
            ops::set_matmul_precision(precision).unwrap();
            let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
            let out =
                if bthd { ops::flash_attention_bthd(q, k, v, causal) } else { ops::flash_attention(q, k, v, causal) };
            let out = out.unwrap();
            let g = ops::sum_all(&ops::mul(&out, &w).unwrap()).unwrap().backward().unwrap();
            let mut all = vec![out.to_vec()];
            all.extend(inputs.iter().map(|t| g.get(t).unwrap().to_vec()));
            all
        };
        let (f32s, f16s) = (run(MatmulPrecision::FP32), run(MatmulPrecision::F16));
        ops::set_matmul_precision(MatmulPrecision::FP32).unwrap();
        for (what, (want, got)) in ["out", "dq", "dk", "dv"].iter().zip(f32s.iter().zip(&f16s)) {
            let norm = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>().sqrt();
            let err = norm(&mut want.iter().zip(got).map(|(&a, &b)| (a - b) as f64));
            let rel = err / norm(&mut want.iter().map(|&a| a as f64));
            let case = cases[i];
            assert!(rel < 2e-3, "{case:?} {what} with f16 matmuls: relative error {rel:e} against FP32");
            // The rounding to f16 shows: the cooperative kernels ran.
            assert!(rel > 1e-5, "{case:?} {what}: f16 matmuls gave FP32's result ({rel:e})");
            eprintln!("{case:?} {what}: relative error {rel:.2e}");
        }
    }
}
