//! The model's ops (rmsnorm, rope, embedding) on every device: values against f64 references
//! at odd sizes, gradients against finite differences, the GPU against the CPU, and errors.

mod common;
use common::{assert_close, f64s, rand_vec, GradCheck};
use irontensor::{ops, Device, Precision, Rope, RopeScaling, Tensor};

fn rmsnorm_ref(x: &[f64], g: &[f64], eps: f64) -> Vec<f64> {
    let c = g.len();
    x.chunks(c)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
            let r = 1.0 / (ms + eps).sqrt();
            row.iter().zip(g).map(move |(v, g)| v * r * g)
        })
        .collect()
}

fn rmsnorm(device: Device) {
    let eps = 1e-5;
    let shapes = [vec![1, 16], vec![7, 64], vec![33, 257], vec![1, 257], vec![33, 16], vec![3, 7, 64]];
    for (seed, shape) in shapes.into_iter().enumerate() {
        let c = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let x = rand_vec(n, -2.0, 2.0, seed as u64);
        let g = rand_vec(c, 0.5, 1.5, 50 + seed as u64);
        GradCheck {
            inputs: vec![(x, shape.clone()), (g, vec![c])],
            op: &|t| ops::rmsnorm(&t[0], &t[1], eps),
            reference: &|x| rmsnorm_ref(&x[0], &x[1], eps as f64),
            atol: 1e-5,
            rtol: 1e-5,
            fd_elems: 300,
        }
        .run(device, &format!("rmsnorm {shape:?}"));
    }
    // A view at an offset (rows 2.. of x) and eps that matters (tiny rows).
    let x = rand_vec(9 * 33, -1e-3, 1e-3, 7);
    let g = rand_vec(33, -1.0, 1.0, 8);
    let xt = Tensor::from_f32_on(&x, &[9, 33], device).unwrap();
    let gt = Tensor::from_f32_on(&g, &[33], device).unwrap();
    let y = ops::rmsnorm(&ops::slice(&xt, 0, 2, 7).unwrap(), &gt, 1e-4).unwrap();
    let want = rmsnorm_ref(&f64s(&x[2 * 33..]), &f64s(&g), 1e-4);
    assert_close(&y.to_vec(), &want, 1e-5, 1e-5, "rmsnorm of a view, large eps");
}

fn rmsnorm_deterministic(device: Device) {
    // Enough rows for many CPU tasks and GPU workgroups; dgamma must be bit-identical.
    let (rows, c) = (1025, 64);
    let x = Tensor::from_f32_on(&rand_vec(rows * c, -2.0, 2.0, 1), &[rows, c], device).unwrap();
    let g = Tensor::from_f32_on(&rand_vec(c, 0.5, 1.5, 2), &[c], device).unwrap();
    let w = Tensor::from_f32_on(&rand_vec(rows * c, -1.0, 1.0, 3), &[rows, c], device).unwrap();
    let run = || {
        let (x, g) = (x.requires_grad_(), g.requires_grad_());
        let y = ops::rmsnorm(&x, &g, 1e-5).unwrap();
        let grads = ops::sum_all(&ops::mul(&y, &w).unwrap()).unwrap().backward().unwrap();
        (grads.get(&x).unwrap().to_vec(), grads.get(&g).unwrap().to_vec())
    };
    let (a, b) = (run(), run());
    assert!(a.0 == b.0 && a.1 == b.1, "rmsnorm gradients differ run to run");
}

/// f64 rope on [B, T, H, D] with positions pos_offset + t.
fn rope_ref(x: &[f64], shape: &[usize], base: f64, pos_offset: usize) -> Vec<f64> {
    let d = shape[3];
    let freqs: Vec<f64> = (0..d / 2).map(|i| base.powf(-2.0 * i as f64 / d as f64)).collect();
    rope_ref_freqs(x, shape, &freqs, pos_offset)
}

/// Llama 3.1's frequencies as its reference code writes them (wavelength bands, smooth blend), in f64.
fn llama3_freqs(base: f64, d: usize, factor: f64, low: f64, high: f64, old_context: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..d / 2 {
        let f = 1.0 / base.powf(2.0 * i as f64 / d as f64);
        let wavelen = 2.0 * std::f64::consts::PI / f;
        out.push(if wavelen < old_context / high {
            f
        } else if wavelen > old_context / low {
            f / factor
        } else {
            let smooth = (old_context / wavelen - low) / (high - low);
            (1.0 - smooth) * f / factor + smooth * f
        });
    }
    out
}

/// f64 rope on [B, T, H, D] with frequencies `freqs` (D/2 of them).
fn rope_ref_freqs(x: &[f64], shape: &[usize], freqs: &[f64], pos_offset: usize) -> Vec<f64> {
    let (t, h, d) = (shape[1], shape[2], shape[3]);
    let half = d / 2;
    let mut out = vec![0.0; x.len()];
    for (k, (xh, oh)) in x.chunks(d).zip(out.chunks_mut(d)).enumerate() {
        let pos = (pos_offset + (k / h) % t) as f64;
        for i in 0..half {
            let th = pos * freqs[i];
            let (s, c) = th.sin_cos();
            oh[i] = xh[i] * c - xh[i + half] * s;
            oh[i + half] = xh[i + half] * c + xh[i] * s;
        }
    }
    out
}

fn rope(device: Device) {
    // [B, T, H, D], base, pos_offset
    let cases = [
        (vec![1, 1, 1, 16], 10000.0, 0),
        (vec![2, 7, 3, 16], 10000.0, 5),
        (vec![1, 65, 2, 64], 10000.0, 0),
        (vec![2, 7, 1, 64], 500000.0, 1000),
        (vec![1, 1, 3, 64], 10000.0, 77),
    ];
    for (seed, (shape, base, off)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = rand_vec(n, -1.0, 1.0, 20 + seed as u64);
        let s = shape.clone();
        GradCheck {
            inputs: vec![(x, shape.clone())],
            op: &|t| ops::rope(&t[0], base as f32, off),
            reference: &|x| rope_ref(&x[0], &s, base, off),
            atol: 2e-5,
            rtol: 1e-5,
            fd_elems: 200,
        }
        .run(device, &format!("rope {shape:?} offset {off}"));
    }
}

/// rope_qkv on [B, T, H + 2·Hkv, D]: q and k heads rotated as `rope` does, v copied; the three
/// outputs checked (and differentiated) as one flat vector.
fn rope_qkv(device: Device) {
    for (seed, (b, t, h, hkv, d, off)) in
        [(2, 5, 3, 1, 6, 3), (1, 33, 4, 2, 16, 0), (2, 1, 2, 2, 64, 70)].into_iter().enumerate()
    {
        let g = h + 2 * hkv;
        let y = rand_vec(b * t * g * d, -1.0, 1.0, 50 + seed as u64);
        let reference = |x: &[Vec<f64>]| {
            let part = |h0: usize, n: usize| -> Vec<f64> {
                x[0].chunks(g * d).flat_map(|row| row[h0 * d..(h0 + n) * d].to_vec()).collect()
            };
            let mut out = rope_ref(&part(0, h), &[b, t, h, d], 10000.0, off);
            out.extend(rope_ref(&part(h, hkv), &[b, t, hkv, d], 10000.0, off));
            out.extend(part(h + hkv, hkv));
            out
        };
        GradCheck {
            inputs: vec![(y.clone(), vec![b, t, g, d])],
            op: &|x| {
                let [q, k, v] = ops::rope_qkv(&x[0], h, hkv, 10000.0, off)?;
                let flat = |x: &Tensor| x.view(&[x.numel()]);
                ops::concat(&[&flat(&q)?, &flat(&k)?, &flat(&v)?], 0)
            },
            reference: &reference,
            atol: 2e-5,
            rtol: 1e-5,
            fd_elems: 200,
        }
        .run(device, &format!("rope_qkv B{b} T{t} H{h} Hkv{hkv} D{d} offset {off}"));
        // A loss of q alone: k and v get no gradient, their part of dy is zero.
        let x = Tensor::from_f32_on(&y, &[b, t, g, d], device).unwrap().requires_grad_();
        let [q, _, _] = ops::rope_qkv(&x, h, hkv, 10000.0, off).unwrap();
        let dy = ops::sum_all(&q).unwrap().backward().unwrap().get(&x).unwrap().to_vec();
        assert!(dy.chunks(g * d).all(|row| row[h * d..].iter().all(|&v| v == 0.0)), "rope_qkv: dk, dv parts");
    }
}

fn rope_long_positions(device: Device) {
    // Positions 8128..8192: a plain f32 pos·freq would be off by ~5e-4 rad here.
    let shape = [1, 65, 2, 64];
    let n: usize = shape.iter().product();
    let x = rand_vec(n, -1.0, 1.0, 31);
    let t = Tensor::from_f32_on(&x, &shape, device).unwrap();
    for (base, off) in [(10000.0, 8127), (500000.0, 8127), (100.0, 4000)] {
        let y = ops::rope(&t, base as f32, off).unwrap();
        let want = rope_ref(&f64s(&x), &shape, base, off);
        assert_close(&y.to_vec(), &want, 2e-5, 0.0, &format!("rope base {base} positions {off}.. on {device:?}"));
    }
}

/// RoPE with llama3 and linear scaling at awkward sizes, positions inside and far past the
/// original context, and every llama3 band (kept, blended, divided) in use; rope_qkv too.
fn rope_scaled(device: Device) {
    let llama3 = |base: f32, factor: f32, low: f32, high: f32, old: usize| Rope {
        base,
        scaling: RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: old,
        },
    };
    // (shape [B, T, H, D], rope, reference frequencies, offset)
    let cases: Vec<(Vec<usize>, Rope, Vec<f64>, usize)> = vec![
        (vec![2, 7, 3, 6], llama3(10000.0, 8.0, 0.5, 2.0, 16), llama3_freqs(1e4, 6, 8.0, 0.5, 2.0, 16.0), 13),
        (vec![1, 33, 2, 22], llama3(500000.0, 32.0, 1.0, 4.0, 64), llama3_freqs(5e5, 22, 32.0, 1.0, 4.0, 64.0), 40),
        (vec![1, 5, 1, 64], llama3(500000.0, 8.0, 1.0, 4.0, 8192), llama3_freqs(5e5, 64, 8.0, 1.0, 4.0, 8192.0), 9000),
        (
            vec![1, 3, 2, 128],
            llama3(500000.0, 8.0, 1.0, 4.0, 8192),
            llama3_freqs(5e5, 128, 8.0, 1.0, 4.0, 8192.0),
            30000,
        ),
        (
            vec![2, 9, 1, 10],
            Rope { base: 10000.0, scaling: RopeScaling::Linear { factor: 4.0 } },
            (0..5).map(|i| 1e4f64.powf(-2.0 * i as f64 / 10.0) / 4.0).collect(),
            70,
        ),
    ];
    for (seed, (shape, rope, freqs, off)) in cases.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = rand_vec(n, -1.0, 1.0, 60 + seed as u64);
        // Every band of the llama3 rule is tested: some frequencies are scaled, some are not.
        let plain = rope_ref(&f64s(&x), &shape, rope.base as f64, off);
        assert!(plain != rope_ref_freqs(&f64s(&x), &shape, &freqs, off));
        let s = shape.clone();
        GradCheck {
            inputs: vec![(x, shape.clone())],
            op: &|t| ops::rope(&t[0], rope, off),
            reference: &|x| rope_ref_freqs(&x[0], &s, &freqs, off),
            atol: 2e-5,
            rtol: 1e-5,
            fd_elems: 100,
        }
        .run(device, &format!("rope {rope:?} {shape:?} offset {off}"));
        // rope_qkv with the same rope: q and k as rope gives them, v untouched.
        let [b, t, h, d] = [shape[0], shape[1], shape[2], shape[3]];
        let y = rand_vec(b * t * 4 * h * d, -1.0, 1.0, 80 + seed as u64);
        let yt = Tensor::from_f32_on(&y, &[b, t, 4 * h, d], device).unwrap();
        let [q, k, v] = ops::rope_qkv(&yt, 2 * h, h, rope, off).unwrap();
        let part = |h0: usize, n: usize| -> Vec<f64> {
            f64s(&y).chunks(4 * h * d).flat_map(|row| row[h0 * d..(h0 + n) * d].to_vec()).collect()
        };
        let what = format!("rope_qkv {rope:?} offset {off}");
        assert_close(&q.to_vec(), &rope_ref_freqs(&part(0, 2 * h), &[b, t, 2 * h, d], &freqs, off), 2e-5, 1e-5, &what);
        assert_close(&k.to_vec(), &rope_ref_freqs(&part(2 * h, h), &[b, t, h, d], &freqs, off), 2e-5, 1e-5, &what);
        assert_close(&v.to_vec(), &part(3 * h, h), 0.0, 0.0, &what);
    }
    // Bad scaling is an error naming it.
    let x = Tensor::from_f32_on(&rand_vec(16, -1.0, 1.0, 5), &[1, 1, 1, 16], device).unwrap();
    let msg = ops::rope(&x, llama3(10000.0, 8.0, 4.0, 1.0, 16), 0).unwrap_err().to_string();
    assert!(msg.contains("llama3") && msg.contains("low_freq_factor"), "{msg}");
}

fn rope_kv_cache(device: Device) {
    // Rotating tokens 3..10 alone with pos_offset = 3 gives rows 3..10 of the full rotation.
    let (t, h, d) = (12, 2, 16);
    let x = rand_vec(t * h * d, -1.0, 1.0, 41);
    let full = Tensor::from_f32_on(&x, &[1, t, h, d], device).unwrap();
    let want = ops::rope(&full, 10000.0, 0).unwrap().to_vec();
    let part = ops::slice(&full.view(&[t, h, d]).unwrap(), 0, 3, 7).unwrap().view(&[1, 7, h, d]).unwrap();
    let got = ops::rope(&part, 10000.0, 3).unwrap().to_vec();
    assert_close(&got, &f64s(&want[3 * h * d..10 * h * d]), 1e-6, 0.0, "rope with pos_offset vs the full sequence");
}

fn embedding(device: Device) {
    // Repeated ids (0, 3 and 5 several times) so the scatter-add must accumulate; some ids unused.
    let ids = [3u32, 0, 5, 3, 3, 1, 0, 5, 2, 3, 0, 7, 5, 3];
    let v = 9;
    for (seed, c) in [16usize, 64, 257].into_iter().enumerate() {
        let w = rand_vec(v * c, -1.0, 1.0, 60 + seed as u64);
        GradCheck {
            inputs: vec![(w, vec![v, c])],
            op: &|t| {
                let ids = Tensor::from_u32_on(&ids, &[2, 7], t[0].device()).unwrap();
                ops::embedding(&ids, &t[0])
            },
            reference: &|w| ids.iter().flat_map(|&id| w[0][id as usize * c..(id as usize + 1) * c].to_vec()).collect(),
            atol: 1e-6,
            rtol: 1e-6,
            fd_elems: v * c,
        }
        .run(device, &format!("embedding C={c}"));
    }
    // d(sum)/dweight counts each id: exact.
    let c = 33;
    let idt = Tensor::from_u32_on(&ids, &[14], device).unwrap();
    let w = Tensor::from_f32_on(&rand_vec(v * c, -1.0, 1.0, 70), &[v, c], device).unwrap().requires_grad_();
    let out = ops::embedding(&idt, &w).unwrap();
    assert_eq!(out.shape(), [14, c]);
    let g = ops::sum_all(&out).unwrap().backward().unwrap();
    let want: Vec<f64> = (0..v * c).map(|k| ids.iter().filter(|&&id| id as usize == k / c).count() as f64).collect();
    assert_close(&g.get(&w).unwrap().to_vec(), &want, 0.0, 0.0, "embedding dweight counts");
}

fn embedding_bf16(device: Device) {
    // BF16 weight, also viewed from row 1 so the packed data starts at an odd element.
    let (v, c) = (7, 257);
    let wf = rand_vec(v * c, -2.0, 2.0, 80);
    let wb = Tensor::from_f32_on(&wf, &[v, c], device).unwrap().to_bf16().unwrap();
    let rounded = wb.to_vec();
    let ids = [2u32, 0, 2, 5, 1];
    let idt = Tensor::from_u32_on(&ids, &[5], device).unwrap();
    for first in [0, 1] {
        let w = ops::slice(&wb, 0, first, v - first).unwrap().requires_grad_();
        assert_eq!(w.dtype(), Precision::BF16);
        let out = ops::embedding(&idt, &w).unwrap();
        assert_eq!(out.dtype(), Precision::FP32);
        let want: Vec<f64> = ids.iter().flat_map(|&id| f64s(&rounded[(first + id as usize) * c..][..c])).collect();
        assert_close(&out.to_vec(), &want, 0.0, 0.0, "embedding of bf16 rows");
        let dy = rand_vec(5 * c, -1.0, 1.0, 81);
        let dyt = Tensor::from_f32_on(&dy, &[5, c], device).unwrap();
        let g = ops::sum_all(&ops::mul(&out, &dyt).unwrap()).unwrap().backward().unwrap();
        let dw = g.get(&w).unwrap();
        assert_eq!((dw.dtype(), dw.shape()), (Precision::FP32, &[v - first, c][..]));
        let mut want = vec![0.0f64; (v - first) * c];
        for (tok, &id) in ids.iter().enumerate() {
            for j in 0..c {
                want[id as usize * c + j] += dy[tok * c + j] as f64;
            }
        }
        assert_close(&dw.to_vec(), &want, 1e-6, 1e-6, "embedding bf16 dweight");
    }
}

fn errors(device: Device) {
    let x = Tensor::from_f32_on(&rand_vec(7 * 16, -1.0, 1.0, 1), &[7, 16], device).unwrap();
    for gshape in [vec![17], vec![2, 16]] {
        let n = gshape.iter().product();
        let g = Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, 2), &gshape, device).unwrap();
        let msg = ops::rmsnorm(&x, &g, 1e-5).unwrap_err().to_string();
        let gs = format!("{gshape:?}");
        assert!(msg.contains("rmsnorm") && msg.contains("[7, 16]") && msg.contains(&gs), "{msg}");
    }
    let odd = Tensor::from_f32_on(&rand_vec(30, -1.0, 1.0, 3), &[1, 2, 3, 5], device).unwrap();
    let msg = ops::rope(&odd, 10000.0, 0).unwrap_err().to_string();
    assert!(msg.contains("rope") && msg.contains("[1, 2, 3, 5]"), "{msg}");
    let msg = ops::rope(&x, 10000.0, 0).unwrap_err().to_string();
    assert!(msg.contains("rope") && msg.contains("[7, 16]"), "{msg}");

    let w = Tensor::from_f32_on(&rand_vec(6 * 4, -1.0, 1.0, 4), &[6, 4], device).unwrap();
    let ids = Tensor::from_u32_on(&[1, 5, 6, 2], &[4], device).unwrap();
    let msg = ops::embedding(&ids, &w).unwrap_err().to_string();
    assert!(msg.contains("embedding") && msg.contains("id 6") && msg.contains("V = 6"), "{msg}");
    let fids = Tensor::from_f32_on(&[1.0, 2.0], &[2], device).unwrap();
    let msg = ops::embedding(&fids, &w).unwrap_err().to_string();
    assert!(msg.contains("embedding") && msg.contains("u32"), "{msg}");
}

device_tests!(
    rmsnorm,
    rmsnorm_deterministic,
    rope,
    rope_qkv,
    rope_long_positions,
    rope_scaled,
    rope_kv_cache,
    embedding,
    embedding_bf16,
    errors
);
