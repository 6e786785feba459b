//! Neural-network layer: a whole TransformerBlock against an f64 reference (values and
//! finite-difference gradients), dropout, and KV-cache generation consistency.

mod common;
use common::{assert_close, rand_vec, GradCheck};
use irontensor::nn::{GPTModel, Loader, ModelConfig, TransformerBlock};
use irontensor::{ops, Device, Precision, Tensor};

const B: usize = 2;
const T: usize = 5;
const C: usize = 16;
const H: usize = 4;
const HKV: usize = 2;
const D: usize = C / H;
const F: usize = 24;

fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 50,
        hidden_dim: C,
        num_layers: 1,
        num_heads: H,
        num_kv_heads: HKV,
        intermediate_dim: F,
        max_seq_len: 16,
        rope_base: 100.0,
        norm_eps: 1e-5,
        tie_weights: true,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    }
}

/// Parameter names in load order, with shapes.
const PARAMS: [(&str, [usize; 2]); 9] = [
    ("input_layernorm.weight", [1, C]),
    ("self_attn.q_proj.weight", [C, C]),
    ("self_attn.k_proj.weight", [HKV * D, C]),
    ("self_attn.v_proj.weight", [HKV * D, C]),
    ("self_attn.o_proj.weight", [C, C]),
    ("post_attention_layernorm.weight", [1, C]),
    ("mlp.gate_proj.weight", [F, C]),
    ("mlp.up_proj.weight", [F, C]),
    ("mlp.down_proj.weight", [C, F]),
];

fn rmsnorm(x: &[f64], g: &[f64]) -> Vec<f64> {
    x.chunks(C)
        .flat_map(|r| {
            let rs = 1.0 / (r.iter().map(|v| v * v).sum::<f64>() / C as f64 + 1e-5).sqrt();
            r.iter().zip(g).map(move |(v, g)| v * rs * g)
        })
        .collect()
}

/// y[n, o] = Σ_i x[n, i] · w[o, i]
fn linear(x: &[f64], w: &[f64], inp: usize, out: usize) -> Vec<f64> {
    x.chunks(inp).flat_map(|r| (0..out).map(move |o| (0..inp).map(|i| r[i] * w[o * inp + i]).sum::<f64>())).collect()
}

/// Rotate-half RoPE in place on rows [B*T, heads*D].
fn rope(x: &mut [f64], heads: usize) {
    for (n, row) in x.chunks_mut(heads * D).enumerate() {
        let t = (n % T) as f64;
        for h in 0..heads {
            let v = &mut row[h * D..(h + 1) * D];
            for i in 0..D / 2 {
                let a = t * 100f64.powf(-2.0 * i as f64 / D as f64);
                let (x1, x2) = (v[i], v[i + D / 2]);
                v[i] = x1 * a.cos() - x2 * a.sin();
                v[i + D / 2] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
}

fn block_ref(inputs: &[Vec<f64>]) -> Vec<f64> {
    let x = &inputs[0];
    let p = &inputs[1..];
    let h = rmsnorm(x, &p[0]);
    let mut q = linear(&h, &p[1], C, C);
    let mut k = linear(&h, &p[2], C, HKV * D);
    let v = linear(&h, &p[3], C, HKV * D);
    rope(&mut q, H);
    rope(&mut k, HKV);
    let mut o = vec![0.0; B * T * C];
    for b in 0..B {
        for hd in 0..H {
            let kh = hd / (H / HKV);
            for i in 0..T {
                let qi = &q[(b * T + i) * C + hd * D..][..D];
                let s: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..D).map(|d| qi[d] * k[(b * T + j) * HKV * D + kh * D + d]).sum::<f64>() / (D as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in s.iter().enumerate() {
                    for d in 0..D {
                        o[(b * T + i) * C + hd * D + d] += (s - m).exp() / z * v[(b * T + j) * HKV * D + kh * D + d];
                    }
                }
            }
        }
    }
    let a = linear(&o, &p[4], C, C);
    let x1: Vec<f64> = x.iter().zip(&a).map(|(x, a)| x + a).collect();
    let h2 = rmsnorm(&x1, &p[5]);
    let g = linear(&h2, &p[6], C, F);
    let u = linear(&h2, &p[7], C, F);
    let act: Vec<f64> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
    let m = linear(&act, &p[8], F, C);
    x1.iter().zip(&m).map(|(x, m)| x + m).collect()
}

fn transformer_block(device: Device) {
    let mut inputs = vec![(rand_vec(B * T * C, -1.0, 1.0, 1), vec![B * T, C])];
    for (i, (name, shape)) in PARAMS.iter().enumerate() {
        let n = shape[0] * shape[1];
        let v = if name.ends_with("norm.weight") {
            rand_vec(n, 0.5, 1.5, 10 + i as u64)
        } else {
            rand_vec(n, -0.5, 0.5, 10 + i as u64)
        };
        let s = if shape[0] == 1 { vec![C] } else { shape.to_vec() };
        inputs.push((v, s));
    }
    GradCheck {
        inputs,
        op: &|t| {
            let mut by_name = PARAMS.iter().map(|(n, _)| *n).zip(&t[1..]);
            let mut l = Loader::new(|name, _| {
                let (n, t) = by_name.next().expect("nine parameters");
                assert!(name.ends_with(n), "{name} loaded out of order");
                Ok(t.clone())
            });
            let block = TransformerBlock::load(&mut l, "model.layers.0", &config())?;
            block.forward(&t[0], B, T, 0, None, None)
        },
        reference: &block_ref,
        atol: 2e-5,
        rtol: 1e-4,
        fd_elems: 6,
    }
    .run(device, "TransformerBlock");
}

fn dropout(device: Device) {
    let n = 20_000;
    let x = Tensor::from_f32_on(&rand_vec(n, 0.5, 1.5, 3), &[n], device).unwrap().requires_grad_();
    let y = ops::dropout(&x, 0.25, 42).unwrap();
    let (xv, yv) = (x.to_vec(), y.to_vec());
    let dropped = yv.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
    for (a, b) in xv.iter().zip(&yv) {
        assert!(*b == 0.0 || (b - a / 0.75).abs() < 1e-6);
    }
    // Same seed, same mask, on every device; another seed, another mask.
    let cpu = ops::dropout(&x.to_device(Device::Cpu).unwrap().detach(), 0.25, 42).unwrap().to_vec();
    assert_eq!(cpu, yv);
    assert_ne!(ops::dropout(&x, 0.25, 43).unwrap().to_vec(), yv);
    // A view at an odd offset, of a length that is no multiple of 4 (the GPU kernel's vec4 path
    // does not apply): the same mask on every device.
    let view = |t: &Tensor| ops::slice(&t.detach(), 0, 1, n - 3).unwrap();
    let on_cpu = ops::dropout(&view(&x.to_device(Device::Cpu).unwrap()), 0.25, 7).unwrap().to_vec();
    assert_eq!(ops::dropout(&view(&x), 0.25, 7).unwrap().to_vec(), on_cpu);
    // The gradient uses the forward's mask.
    let g = ops::sum_all(&y).unwrap().backward().unwrap();
    let gv = g.get(&x).unwrap().to_vec();
    for (gy, y) in gv.iter().zip(&yv) {
        assert_eq!(*gy, if *y == 0.0 { 0.0 } else { 1.0 / 0.75 });
    }
    assert!(ops::dropout(&x, 1.0, 0).is_err());
}

fn kv_cache_matches_full_forward(device: Device) {
    let mut c = config();
    c.num_layers = 2;
    let model = GPTModel::new_on(c, device, 3).unwrap();
    let ids: Vec<u32> = vec![3, 14, 15, 9, 26, 5, 35, 8];
    let full = model.forward(&Tensor::from_u32_on(&ids, &[1, 8], device).unwrap(), 1, 8, 0).unwrap().to_vec();
    // Prompt of 5, then one token at a time through the cache.
    let mut cache = model.new_cache();
    let prompt = Tensor::from_u32_on(&ids[..5], &[1, 5], device).unwrap();
    let h = model.hidden(&prompt, 1, 5, 0, Some(&mut cache), None).unwrap();
    let mut last = Vec::new();
    last.push(ops::matmul_t(&ops::slice(&h, 0, 4, 1).unwrap(), model.output_weight(), false, true).unwrap().to_vec());
    for (i, &id) in ids[5..].iter().enumerate() {
        let tok = Tensor::from_u32_on(&[id], &[1, 1], device).unwrap();
        let h = model.hidden(&tok, 1, 1, 5 + i, Some(&mut cache), None).unwrap();
        last.push(ops::matmul_t(&h, model.output_weight(), false, true).unwrap().to_vec());
    }
    assert_eq!(cache[0].len(), 8);
    for (k, l) in last.iter().enumerate() {
        let want: Vec<f64> = full[(4 + k) * 50..(5 + k) * 50].iter().map(|&v| v as f64).collect();
        assert_close(l, &want, 1e-5, 1e-4, &format!("cached logits at position {}", 4 + k));
    }
}

fn generation(device: Device) {
    use irontensor::infer::{generate, SamplingConfig};
    let mut c = config();
    c.max_seq_len = 12; // short, so generation slides its window
    let model = GPTModel::new_on(c, device, 11).unwrap();
    let greedy = SamplingConfig { temperature: 0.0, max_tokens: 20, slide: true, ..Default::default() };
    let mut streamed = Vec::new();
    let cached = generate(&model, &[1, 2, 3], &greedy, &[], true, |t| streamed.push(t)).unwrap();
    let full = generate(&model, &[1, 2, 3], &greedy, &[], false, |_| {}).unwrap();
    assert_eq!(cached, full, "greedy tokens with and without the KV cache");
    assert_eq!(streamed, cached);
    assert_eq!(cached.len(), 20);
    // Sliding: each token past the context is the greedy one of the newest 12 tokens.
    let mut all = vec![1, 2, 3];
    all.extend(&cached);
    for k in 10..20 {
        let window = &all[k + 3 - 12..k + 3];
        let next = generate(&model, window, &SamplingConfig { max_tokens: 1, ..greedy.clone() }, &[], false, |_| {});
        assert_eq!(next.unwrap(), vec![cached[k]], "token {k} from its 12-token window");
    }
    // Without sliding, generation stops when the context is full, and a longer prompt is refused.
    let stop = SamplingConfig { slide: false, ..greedy.clone() };
    let stopped = generate(&model, &[1, 2, 3], &stop, &[], true, |_| {}).unwrap();
    assert_eq!(stopped, cached[..10], "12 - 3 + 1 tokens, each with a full context");
    let long: Vec<u32> = (0..13).collect();
    let e = generate(&model, &long, &stop, &[], true, |_| {}).unwrap_err().to_string();
    assert!(e.contains("13 tokens") && e.contains("at most 12"), "{e}");
    assert_eq!(
        generate(&model, &long, &SamplingConfig { max_tokens: 2, ..greedy.clone() }, &[], true, |_| {}).unwrap().len(),
        2
    );
    // Stops at end-of-text.
    let eos = cached[4];
    let stopped = generate(&model, &[1, 2, 3], &greedy, &[eos], true, |_| {}).unwrap();
    assert_eq!(stopped.last(), Some(&eos));
    assert!(stopped.len() <= 5);
    // Seeded sampling is reproducible; the seed matters.
    let s = |seed| SamplingConfig { temperature: 1.0, top_k: 0, top_p: 1.0, seed, max_tokens: 10, slide: false };
    let a = generate(&model, &[4], &s(1), &[], true, |_| {}).unwrap();
    assert_eq!(a, generate(&model, &[4], &s(1), &[], true, |_| {}).unwrap());
    assert_ne!(a, generate(&model, &[4], &s(2), &[], true, |_| {}).unwrap());
    assert!(generate(&model, &[], &greedy, &[], true, |_| {}).is_err());
    assert!(generate(&model, &[50], &greedy, &[], true, |_| {}).is_err());
}

#[test]
fn sampling_filters() {
    use irontensor::infer::{sample, SamplingConfig};
    let logits = [0.0, 3.0, 2.9, -1.0, 2.0];
    let mut rng = irontensor::rng::Rng::new(5);
    let cfg = |t, k, p| SamplingConfig { temperature: t, top_k: k, top_p: p, seed: 0, max_tokens: 1, slide: false };
    assert_eq!(sample(&logits, &cfg(0.0, 0, 1.0), &mut rng), 1);
    for _ in 0..50 {
        assert_eq!(sample(&logits, &cfg(1.0, 1, 1.0), &mut rng), 1, "top-k 1 is greedy");
        assert!([1, 2].contains(&sample(&logits, &cfg(1.0, 2, 1.0), &mut rng)), "top-k 2");
        assert!([1, 2].contains(&sample(&logits, &cfg(1.0, 0, 0.6), &mut rng)), "top-p 0.6 keeps the two best");
    }
    // Temperature 1 samples in proportion to softmax: token 3 is rare, token 1 common.
    let counts = (0..4000).fold([0; 5], |mut c, _| {
        c[sample(&logits, &cfg(1.0, 0, 1.0), &mut rng) as usize] += 1;
        c
    });
    let z: f64 = logits.iter().map(|&l: &f32| (l as f64).exp()).sum();
    for (i, &n) in counts.iter().enumerate() {
        let p = (logits[i] as f64).exp() / z;
        assert!((n as f64 / 4000.0 - p).abs() < 0.03, "token {i}: {n}/4000 vs p = {p:.3}");
    }
}

device_tests!(transformer_block, dropout, kv_cache_matches_full_forward, generation);

/// The cache writes each new position into buffers made for the whole context, for one sequence
/// or several: the buffers returned stay the same storage (nothing earlier is copied), their first
/// `len()` positions of each sequence hold what was appended, and a position past the capacity
/// is an error.
#[test]
fn kv_cache_appends_in_place() {
    use irontensor::nn::KvCache;
    for device in [Some(Device::Cpu), common::gpu()].into_iter().flatten() {
        for b in [1, 3] {
            let t = |n: usize, seed: u64| {
                Tensor::from_f32_on(&rand_vec(b * n * 8, -1.0, 1.0, seed), &[b, n, 2, 4], device).unwrap()
            };
            let mut cache = KvCache::with_capacity(8);
            let (k3, v3) = (t(3, 1), t(3, 2));
            let (k, v) = cache.append(k3.clone(), v3.clone()).unwrap();
            let (k1, v1) = (t(1, 3), t(1, 4));
            let (k2, v2) = cache.append(k1.clone(), v1.clone()).unwrap();
            assert_eq!((k2.shape(), cache.len()), (&[b, 8, 2, 4][..], 4));
            assert!(k2.shares_storage(&k) && v2.shares_storage(&v), "{device:?}: the cache was copied");
            // Sequence i: its 3 prompt positions, then the new one.
            let filled = |cached: &Tensor, first: &Tensor, next: &Tensor| {
                let (c, f, n) = (cached.to_vec(), first.to_vec(), next.to_vec());
                for i in 0..b {
                    let want = [&f[i * 24..(i + 1) * 24], &n[i * 8..(i + 1) * 8]].concat();
                    assert_eq!(&c[i * 64..i * 64 + 32], &want[..], "{device:?} batch {b}, sequence {i}");
                }
            };
            filled(&k2, &k3, &k1);
            filled(&v2, &v3, &v1);
            let e = cache.append(t(5, 5), t(5, 6)).unwrap_err().to_string();
            assert!(e.contains("exceed its 8"), "{e}");
        }
    }
}
