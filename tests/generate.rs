//! Generation: the GPU sampler against the CPU's on random logits, batched decoding against single
//! decodes, the KV cache's attention against the whole window, and one host read per token.

mod common;
use common::{assert_close, rand_vec};
use irontensor::infer::{generate, generate_batch, SamplingConfig};
use irontensor::nn::{GPTModel, ModelConfig};
use irontensor::ops::{self, Sampling};
use irontensor::rng::Rng;
use irontensor::{no_grad, Device, Precision, Tensor};
use std::sync::{Mutex, MutexGuard};

/// The GPU tests here take turns: the buffer pool is shared, and the bind-group count of
/// `one_host_read_per_token` depends on which buffers it hands out.
fn gpu_turn(device: Device) -> Option<MutexGuard<'static, ()>> {
    static TURN: Mutex<()> = Mutex::new(());
    (device == Device::Gpu).then(|| TURN.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Random logits [rows, vocab] with ties: in every row a run of ids shares the largest value, and
/// the rest are rounded to steps of `step` (0: not rounded), so that cuts fall inside groups of
/// equal logits, where the order is by id.
fn logits(rows: usize, vocab: usize, step: f32, seed: u64) -> Vec<f32> {
    let mut l = rand_vec(rows * vocab, -6.0, 6.0, seed);
    if step > 0.0 {
        l.iter_mut().for_each(|x| *x = (*x / step).round() * step);
    }
    for r in 0..rows {
        let row = &mut l[r * vocab..(r + 1) * vocab];
        let top = row.iter().cloned().fold(f32::MIN, f32::max) + 0.5;
        for j in [vocab / 3, vocab / 3 + 1, vocab - 1] {
            row[j] = top;
        }
    }
    l
}

/// The GPU picks the id the CPU reference picks for the same logits and draws, for greedy and
/// sampled decoding, with and without the top-k and top-p cuts, at awkward vocabulary sizes.
#[test]
fn gpu_sampling_matches_cpu() {
    let Some(gpu) = common::gpu() else { return };
    let _turn = gpu_turn(gpu);
    let rules = [
        Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 },
        Sampling { temperature: 1.0, top_k: 0, top_p: 1.0 },
        Sampling { temperature: 0.7, top_k: 40, top_p: 1.0 },
        Sampling { temperature: 1.3, top_k: 0, top_p: 0.9 },
        Sampling { temperature: 0.8, top_k: 50, top_p: 0.95 },
        Sampling { temperature: 2.0, top_k: 2, top_p: 0.5 },
        Sampling { temperature: 1.0, top_k: 100_000, top_p: 0.3 },
    ];
    let mut differ = 0;
    for (vocab, rows, step) in [(1000, 3, 0.0), (1000, 2, 0.25), (32771, 2, 0.5), (7, 5, 1.0)] {
        let l = logits(rows, vocab, step, vocab as u64 + rows as u64);
        let (cpu_l, gpu_l) = (
            Tensor::from_f32_on(&l, &[rows, vocab], Device::Cpu).unwrap(),
            Tensor::from_f32_on(&l, &[rows, vocab], gpu).unwrap(),
        );
        for (n, s) in rules.iter().enumerate() {
            for seed in 0..3 {
                let mut rng = Rng::new(seed * 31 + n as u64);
                let draws: Vec<f64> = (0..rows).map(|_| rng.uniform()).collect();
                let want: Vec<u32> =
                    (0..rows).map(|r| ops::sample_row(&l[r * vocab..(r + 1) * vocab], s, draws[r])).collect();
                let got = ops::sample(&gpu_l, s, &draws).unwrap().to_vec_u32();
                assert_eq!(got, want, "V {vocab}, step {step}, {s:?}, draws {draws:?}");
                assert_eq!(ops::sample(&cpu_l, s, &draws).unwrap().to_vec_u32(), want);
                differ += (want.iter().any(|&w| w != want[0])) as usize;
            }
        }
    }
    assert!(differ > 10, "the draws should pick different ids across rows");
    // Greedy ties go to the lowest id; a row of logits whose shape is wrong is an error.
    let tied = Tensor::from_f32_on(&[1.0, 3.0, 3.0, -2.0, 3.0], &[1, 5], gpu).unwrap();
    assert_eq!(ops::sample(&tied, &rules[0], &[]).unwrap().to_vec_u32(), [1]);
    assert!(ops::sample(&tied.view(&[5]).unwrap(), &rules[0], &[]).is_err());
    assert!(ops::sample(&tied, &rules[1], &[]).is_err(), "a draw per row is needed");
}

fn model_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 61,
        hidden_dim: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 40,
        max_seq_len: 24,
        rope_base: 100.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    }
}

/// Prompts decoded together give what each gives alone (greedy and seeded sampling, with and
/// without the KV cache, a row stopping early at its stop token, the context filling up).
fn batched_decoding_equals_single(device: Device) {
    let _turn = gpu_turn(device);
    let model = GPTModel::new_on(model_config(), device, 5).unwrap();
    let mut rng = Rng::new(3);
    let prompts: Vec<Vec<u32>> = (0..3).map(|_| (0..7).map(|_| rng.below(61) as u32).collect()).collect();
    let views: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
    let greedy = SamplingConfig { temperature: 0.0, max_tokens: 12, seed: 9, ..Default::default() };
    let sampled = SamplingConfig { temperature: 1.0, top_k: 20, top_p: 0.9, ..greedy.clone() };
    let long = SamplingConfig { max_tokens: 40, ..greedy.clone() }; // stops when 24 positions are full
    for (cfg, cache) in [(&greedy, true), (&greedy, false), (&sampled, true), (&long, true)] {
        let single: Vec<Vec<u32>> = (0..3)
            .map(|i| {
                let cfg = SamplingConfig { seed: cfg.seed + i as u64, ..cfg.clone() };
                generate(&model, &prompts[i], &cfg, &[], cache, |_| {}).unwrap()
            })
            .collect();
        let mut streamed = vec![Vec::new(); 3];
        let batched = generate_batch(&model, &views, cfg, &[], cache, |i, t| streamed[i].push(t)).unwrap();
        assert_eq!(batched, single, "{device:?}, cache {cache}, {cfg:?}");
        assert_eq!(streamed, single);
        assert_ne!(single[0], single[1], "different prompts should decode differently");
        if cfg.max_tokens == 40 {
            assert_eq!(single[0].len(), 24 - 7 + 1, "the context filled up");
        }
    }
    // Row 1 stops at its fourth token; the others go on.
    let all = generate_batch(&model, &views, &greedy, &[], true, |_, _| {}).unwrap();
    let stop = [all[1][3]];
    let stopped = generate_batch(&model, &views, &greedy, &stop, true, |_, _| {}).unwrap();
    for (i, row) in stopped.iter().enumerate() {
        let end = all[i].iter().position(|t| *t == stop[0]).map_or(12, |p| p + 1);
        assert_eq!(row[..], all[i][..end], "row {i}");
    }
    let short: Vec<&[u32]> = vec![&prompts[0], &prompts[1][..6]];
    assert!(generate_batch(&model, &short, &greedy, &[], true, |_, _| {})
        .unwrap_err()
        .to_string()
        .contains("one length"));
}

/// Attention through a cache of several sequences (a prompt, then one token at a time) gives the
/// whole window's logits at each position.
fn batched_cache_matches_full_forward(device: Device) {
    let _turn = gpu_turn(device);
    let model = GPTModel::new_on(model_config(), device, 8).unwrap();
    let (b, t, v) = (3, 9, 61);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 7 % 61) as u32).collect();
    let full = model.forward(&Tensor::from_u32_on(&ids, &[b, t], device).unwrap(), b, t, 0).unwrap().to_vec();
    no_grad(|| {
        let mut cache = model.new_cache();
        let rows = |from: usize, n: usize| -> Vec<u32> {
            (0..b).flat_map(|i| ids[i * t + from..i * t + from + n].to_vec()).collect()
        };
        let x = Tensor::from_u32_on(&rows(0, 5), &[b, 5], device).unwrap();
        let h = model.hidden(&x, b, 5, 0, Some(&mut cache), None).unwrap();
        let first = ops::matmul_t(&h, model.output_weight(), false, true).unwrap().to_vec();
        for i in 0..b {
            let want: Vec<f64> = full[i * t * v..(i * t + 5) * v].iter().map(|&x| x as f64).collect();
            assert_close(
                &first[i * 5 * v..(i + 1) * 5 * v],
                &want,
                1e-5,
                1e-4,
                &format!("{device:?}: prompt of row {i}"),
            );
        }
        for p in 5..t {
            let x = Tensor::from_u32_on(&rows(p, 1), &[b, 1], device).unwrap();
            let h = model.hidden(&x, b, 1, p, Some(&mut cache), None).unwrap();
            let got = ops::matmul_t(&h, model.output_weight(), false, true).unwrap().to_vec();
            for i in 0..b {
                let want: Vec<f64> = full[(i * t + p) * v..(i * t + p + 1) * v].iter().map(|&x| x as f64).collect();
                assert_close(&got[i * v..(i + 1) * v], &want, 1e-5, 1e-4, &format!("{device:?}: row {i} at {p}"));
            }
        }
    });
}

device_tests!(batched_decoding_equals_single, batched_cache_matches_full_forward);

/// A decoded token costs the GPU one host read (its id) whatever the sampling rule, and a fixed
/// number of dispatches; printed, they are the per-token costs `bench generate` reports.
#[test]
fn one_host_read_per_token() {
    let Some(gpu) = common::gpu() else { return };
    let _turn = gpu_turn(gpu);
    let model = GPTModel::new_on(model_config(), gpu, 2).unwrap();
    let greedy = SamplingConfig { temperature: 0.0, max_tokens: 6, ..Default::default() };
    let sampled = SamplingConfig { temperature: 0.9, top_k: 10, top_p: 0.8, ..greedy.clone() };
    let prompts: Vec<&[u32]> = vec![&[1, 2, 3, 4], &[5, 6, 7, 8]];
    // Once before counting: the RoPE table is uploaded at its first use in the process.
    generate_batch(&model, &prompts[..1], &greedy, &[], true, |_, _| {}).unwrap();
    for cfg in [&greedy, &sampled] {
        for rows in [1, 2] {
            let before = irontensor::device::gpu::counters();
            let made = generate_batch(&model, &prompts[..rows], cfg, &[], true, |_, _| {}).unwrap();
            let n = irontensor::device::gpu::counters() - before;
            assert_eq!(made[0].len(), 6);
            assert_eq!(n.reads, 6, "one read per token (the ids), {rows} rows, {cfg:?}: {n:?}");
            assert_eq!(n.submits, 6, "one submit per token: {n:?}");
            assert_eq!(n.uploads, 6 + (cfg.temperature > 0.0) as u64 * 6, "the ids and the draws: {n:?}");
            eprintln!("per token, {rows} rows, temperature {}: {:?}", cfg.temperature, n);
        }
    }
    // Decoding again on the same shapes makes few new bind groups: the pooled buffers recur.
    let longer = SamplingConfig { max_tokens: 16, ..greedy.clone() };
    generate_batch(&model, &prompts[..1], &longer, &[], true, |_, _| {}).unwrap();
    let before = irontensor::device::gpu::counters();
    generate_batch(&model, &prompts[..1], &longer, &[], true, |_, _| {}).unwrap();
    let n = irontensor::device::gpu::counters() - before;
    assert!(n.bind_groups * 4 < n.dispatches, "bind groups reused: {n:?}");
}
