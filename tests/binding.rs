//! Tensors larger than one GPU binding. This test binary binds at most 16 KiB of a buffer
//! (the setting behind IRONTENSOR_MAX_BINDING), so the paths that split weights, gradients and
//! optimizer state into binding-sized windows run on small tensors, and a model's flat
//! parameters span several buffers. References: f64 loops, and the CPU backend.

mod common;
use common::{assert_close, f64s, rand_vec};
use irontensor::nn::ModelConfig;
use irontensor::settings::GpuSettings;
use irontensor::train::{OptimizerKind, Trainer, TrainingConfig};
use irontensor::{Device, Precision, Settings, Tensor};

const MAX_BINDING: u64 = 16 << 10;

/// The GPU with 16 KiB bindings, configured before anything starts it.
fn gpu() -> Option<Device> {
    static CONFIGURE: std::sync::Once = std::sync::Once::new();
    CONFIGURE.call_once(|| {
        let gpu = GpuSettings { max_binding: Some(MAX_BINDING), ..Default::default() };
        irontensor::configure(&Settings { gpu, ..Default::default() }).unwrap();
    });
    let device = common::gpu()?;
    assert_eq!(irontensor::device::gpu::context().unwrap().max_binding(), MAX_BINDING);
    Some(device)
}

fn tensor(v: &[f32], shape: &[usize], device: Device) -> Tensor {
    Tensor::from_f32_on(v, shape, device).unwrap()
}

#[test]
fn embedding_of_a_weight_larger_than_a_binding() {
    let Some(gpu) = gpu() else { return };
    let (v, c) = (701, 24); // 67 KB of f32: five windows
    let w = rand_vec(v * c, -1.0, 1.0, 1);
    let ids: Vec<u32> = (0..45).map(|i| (i * 379 + 11) % v as u32).chain([700, 0, 700]).collect();
    let n = ids.len();
    for dtype in [Precision::FP32, Precision::BF16] {
        let weight = irontensor::cast(&tensor(&w, &[v, c], gpu), dtype).unwrap().requires_grad_();
        let wv = weight.to_vec(); // as stored (bf16 rounded)
        let out = irontensor::embedding(&Tensor::from_u32_on(&ids, &[n], gpu).unwrap(), &weight).unwrap();
        let want: Vec<f64> = ids.iter().flat_map(|&id| f64s(&wv[id as usize * c..][..c])).collect();
        assert_close(&out.to_vec(), &want, 0.0, 0.0, &format!("{} gather", dtype.name()));
        let dy = rand_vec(n * c, -1.0, 1.0, 2);
        let loss = irontensor::sum_all(&irontensor::mul(&out, &tensor(&dy, &[n, c], gpu)).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let mut dw = vec![0.0f64; v * c];
        for (t, &id) in ids.iter().enumerate() {
            for j in 0..c {
                dw[id as usize * c + j] += dy[t * c + j] as f64;
            }
        }
        assert_close(&grads.get(&weight).unwrap().to_vec(), &dw, 1e-6, 1e-6, "scatter-add");
    }
}

#[test]
fn fused_cross_entropy_with_an_output_weight_larger_than_a_binding() {
    let Some(gpu) = gpu() else { return };
    let (n, c, v) = (37, 20, 513); // weight 41 KB: three vocabulary blocks
    let (h, w) = (rand_vec(n * c, -1.0, 1.0, 3), rand_vec(v * c, -1.0, 1.0, 4));
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97 + 5) % v as u32).collect();
    let (ht, wt) = (tensor(&h, &[n, c], gpu).requires_grad_(), tensor(&w, &[v, c], gpu).requires_grad_());
    let tt = Tensor::from_u32_on(&targets, &[n], gpu).unwrap();
    let loss = irontensor::fused_linear_cross_entropy(&ht, &wt, &tt, None).unwrap();
    let grads = loss.backward().unwrap();
    // f64: loss = mean(lse - logit[target]); dlogits = (softmax - onehot) / n.
    let (mut want, mut dh, mut dw) = (0.0, vec![0.0; n * c], vec![0.0; v * c]);
    for r in 0..n {
        let logits: Vec<f64> =
            (0..v).map(|k| (0..c).map(|j| h[r * c + j] as f64 * w[k * c + j] as f64).sum()).collect();
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        want += (lse - logits[targets[r] as usize]) / n as f64;
        for k in 0..v {
            let g = ((logits[k] - lse).exp() - (k == targets[r] as usize) as u32 as f64) / n as f64;
            for j in 0..c {
                dh[r * c + j] += g * w[k * c + j] as f64;
                dw[k * c + j] += g * h[r * c + j] as f64;
            }
        }
    }
    assert_close(&[loss.item().unwrap()], &[want], 1e-5, 1e-5, "loss");
    assert_close(&grads.get(&ht).unwrap().to_vec(), &dh, 1e-5, 1e-4, "d hidden");
    assert_close(&grads.get(&wt).unwrap().to_vec(), &dw, 1e-5, 1e-4, "d weight");
}

#[test]
fn norm_and_clipping_of_a_gradient_larger_than_a_binding() {
    let Some(gpu) = gpu() else { return };
    let big = rand_vec(12_345, -1.0, 1.0, 5); // 49 KB
    let small = rand_vec(100, -1.0, 1.0, 6);
    let grads = [tensor(&small, &[100], gpu), tensor(&big, &[12_345], gpu)];
    let want = small.iter().chain(&big).map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let norm = irontensor::optim::clip_grad_norm(&grads, 1.0).unwrap();
    assert_close(&[norm], &[want], 0.0, 1e-5, "global norm");
    let k = 1.0 / (want + 1e-6);
    assert_close(&grads[1].to_vec(), &big.iter().map(|&x| x as f64 * k).collect::<Vec<_>>(), 1e-7, 1e-5, "clipped");
}

/// adamw8bit on parameters whose weights, gradients and 8-bit codes each span several bindings
/// (pieces of whole blocks), f32 and bf16 (at an odd offset): as on the CPU.
#[test]
fn adamw8bit_on_a_parameter_larger_than_a_binding() {
    use irontensor::optim::{AdamW8bit, AdamWConfig, Optimizer};
    let Some(gpu) = gpu() else { return };
    let n = 20_003; // 80 KB of f32, 40 KB of codes: six pieces
    let run = |device: Device, dtype: Precision| {
        let whole = irontensor::cast(&tensor(&rand_vec(n + 1, -1.0, 1.0, 8), &[n + 1], device), dtype).unwrap();
        let p = vec![irontensor::ops::slice(&whole, 0, 1, n).unwrap()];
        let mut opt = AdamW8bit::new(AdamWConfig { lr: 0.01, seed: 3, ..Default::default() });
        for t in 0..3 {
            opt.step(&p, &[tensor(&rand_vec(n, -1.0, 1.0, 20 + t), &[n], device)]).unwrap();
        }
        (p[0].to_vec(), opt.state()[1].to_vec())
    };
    for (dtype, tol) in [(Precision::FP32, 1e-5), (Precision::BF16, 1e-2)] {
        let ((wc, sc), (wg, sg)) = (run(Device::Cpu, dtype), run(gpu, dtype));
        assert_close(&wg, &f64s(&wc), tol, tol, &format!("{} weights", dtype.name()));
        assert_close(&sg, &f64s(&sc), 1e-9, 1e-4, &format!("{} scales", dtype.name()));
    }
}

/// A model whose embedding, output projection and their optimizer state are each larger than
/// one binding, and whose other parameters span several buffers, trains as it does on the CPU.
#[test]
fn a_model_larger_than_a_binding_trains_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let model = ModelConfig {
        vocab_size: 300,
        hidden_dim: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 64,
        max_seq_len: 16,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: Precision::FP32,
        dropout: 0.0,
        ..ModelConfig::tiny()
    };
    for bf16 in [false, true] {
        let cfg = TrainingConfig {
            learning_rate: 3e-3,
            optimizer: OptimizerKind::AdamW,
            warmup_steps: 2,
            total_steps: 6,
            use_bf16: bf16,
            max_grad_norm: 0.5,
            ..Default::default()
        };
        let mut cpu = Trainer::new_on(model.clone(), cfg.clone(), Device::Cpu).unwrap();
        let mut dev = Trainer::new_on(model.clone(), cfg, gpu).unwrap();
        let params: Vec<&Tensor> = dev.model.parameters().iter().map(|(_, p)| p).collect();
        let buffers = params.iter().enumerate().filter(|(i, p)| params[..*i].iter().all(|q| !q.shares_storage(p)));
        assert!(buffers.count() > 4, "the parameters should span several buffers");
        let text = std::fs::read(common::SHAKESPEARE).unwrap();
        for step in 0..6 {
            let window = &text[step * 4000..][..2 * 16 + 1];
            let x: Vec<u32> = window[..32].iter().map(|&b| b as u32 % 300).collect();
            let y: Vec<u32> = window[1..33].iter().map(|&b| b as u32 % 300).collect();
            let (lc, nc) = cpu.train_step(&x, &y, 2, 16).unwrap();
            let (lg, ng) = dev.train_step(&x, &y, 2, 16).unwrap();
            let tol = if bf16 { 2e-2 } else { 2e-3 };
            assert!((lc - lg).abs() < tol * lc.abs().max(1.0), "bf16 {bf16} step {step}: cpu loss {lc}, gpu {lg}");
            assert!((nc - ng).abs() < 10.0 * tol * nc.max(1.0), "bf16 {bf16} step {step}: cpu norm {nc}, gpu {ng}");
        }
    }
}

/// An op that cannot split a tensor larger than one binding says so: an error, not a panic.
#[test]
fn an_op_that_cannot_split_a_large_tensor_returns_an_error() {
    let Some(gpu) = gpu() else { return };
    let x = tensor(&rand_vec(8 * 1000, -1.0, 1.0, 7), &[8, 1000], gpu);
    let err = irontensor::softmax(&x).unwrap_err().to_string();
    assert!(err.contains("larger than") && err.contains("16384"), "{err}");
    // The GPU goes on working afterwards.
    let y = irontensor::scale(&tensor(&[1.0, 2.0], &[2], gpu), 3.0).unwrap();
    assert_eq!(y.to_vec(), vec![3.0, 6.0]);
}
