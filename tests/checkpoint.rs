//! Activation checkpointing: `autograd::checkpoint` against the same computation recorded whole,
//! the model's gradients and loss curve with and without `checkpoint_activations`, the plan's numbers.

mod common;
use common::{assert_close, f64s, rand_vec};
use irontensor::autograd::checkpoint;
use irontensor::nn::{GPTModel, ModelConfig};
use irontensor::train::{MemoryPlan, OptimizerKind, Trainer, TrainingConfig};
use irontensor::{ops, Device, Precision, Result, Tensor};

const N: usize = 7;
const K: usize = 5;
const M: usize = 3;

/// The function checkpointed: out0 = silu(x · wᵀ) ⊙ frozen, out1 = x ⊙ x · 3 (w [M, K], x [N, K]).
fn two_outputs(x: &Tensor, w: &Tensor, frozen: &Tensor) -> Result<Vec<Tensor>> {
    let h = ops::silu(&ops::matmul_t(x, w, false, true)?)?;
    Ok(vec![ops::mul(&h, frozen)?, ops::scale(&ops::mul(x, x)?, 3.0)?])
}

/// Gradients of a, w and g for loss = Σ r0 ⊙ out0 (+ Σ r1 ⊙ out1 ⊙ g when `both`), with the
/// function checkpointed or not; and what the leaf hook saw for w.
fn grads(device: Device, checkpointed: bool, both: bool) -> (Vec<Vec<f32>>, Vec<f32>) {
    let t =
        |n: usize, shape: &[usize], seed| Tensor::from_f32_on(&rand_vec(n, -1.0, 1.0, seed), shape, device).unwrap();
    let a = t(N * K, &[N, K], 1).requires_grad_();
    let w = t(M * K, &[M, K], 2).requires_grad_();
    let g = t(N * K, &[N, K], 3).requires_grad_();
    let frozen = t(N * M, &[N, M], 4);
    let (r0, r1) = (t(N * M, &[N, M], 5), t(N * K, &[N, K], 6));
    // x is an op's output, so the checkpoint gets a detached copy of it.
    let x = ops::scale(&a, 1.5).unwrap();
    let outs = match checkpointed {
        true => {
            let frozen_in = frozen.clone();
            checkpoint("test", &[&x, &w, &frozen_in], |a| two_outputs(&a[0], &a[1], &a[2])).unwrap()
        }
        false => two_outputs(&x, &w, &frozen).unwrap(),
    };
    let mut loss = ops::sum_all(&ops::mul(&outs[0], &r0).unwrap()).unwrap();
    if both {
        let second = ops::sum_all(&ops::mul(&ops::mul(&outs[1], &r1).unwrap(), &g).unwrap()).unwrap();
        loss = ops::add(&loss, &second).unwrap();
    }
    let mut hooked = Vec::new();
    let gr = loss
        .backward_with_hook(&mut |leaf, grad| {
            if leaf.id() == w.id() {
                hooked = grad.to_vec();
            }
            Ok(())
        })
        .unwrap();
    let get = |t: &Tensor| gr.get(t).map(|g| g.to_vec()).unwrap_or_default();
    (vec![get(&a), get(&w), get(&g)], hooked)
}

fn checkpoint_matches_the_whole_graph(device: Device) {
    for both in [true, false] {
        let (want, _) = grads(device, false, both);
        let (got, hooked) = grads(device, true, both);
        for (name, (got, want)) in ["a", "w", "g"].iter().zip(got.iter().zip(&want)) {
            assert_eq!(got.len(), want.len(), "both {both}: d{name} present in one run only");
            assert_close(got, &f64s(want), 1e-6, 1e-5, &format!("both {both}: d{name}"));
        }
        assert!(!want[1].is_empty() && want[1].iter().any(|v| v.abs() > 1e-3), "dw is not trivial");
        assert_eq!(hooked, got[1], "both {both}: the hook saw w's gradient");
        // g is used only outside the checkpoint, with the second output.
        assert_eq!(got[2].is_empty(), !both);
    }
}

fn a_parameter_captured_but_not_passed_is_an_error(device: Device) {
    let w = Tensor::from_f32_on(&rand_vec(M * K, -1.0, 1.0, 8), &[M, K], device).unwrap().requires_grad_();
    let x = Tensor::from_f32_on(&rand_vec(N * K, -1.0, 1.0, 9), &[N, K], device).unwrap().requires_grad_();
    let captured = w.clone();
    let out = checkpoint("test", &[&x], move |a| Ok(vec![ops::matmul_t(&a[0], &captured, false, true)?])).unwrap();
    let err = ops::sum_all(&out[0]).unwrap().backward().unwrap_err().to_string();
    assert!(err.contains("test") && err.contains("not among its inputs"), "{err}");
}

fn config(dropout: f32) -> ModelConfig {
    ModelConfig {
        vocab_size: 37,
        hidden_dim: 24,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_dim: 40,
        max_seq_len: 16,
        rope_base: 10000.0,
        norm_eps: 1e-5,
        tie_weights: false,
        precision: Precision::FP32,
        dropout,
        ..ModelConfig::tiny()
    }
}

/// (parameter name, gradient) of every parameter for one training loss (dropout seeded by `seed`).
fn model_grads(device: Device, checkpointed: bool, seed: u64) -> Vec<(String, Vec<f32>)> {
    let (b, t) = (2, 11);
    let mut model = GPTModel::new_on(config(0.3), device, 5).unwrap();
    model.checkpoint_activations = checkpointed;
    let ids = |s: u64| (0..b * t).map(|i| ((i as u64 * 7 + s * 13) % 37) as u32).collect::<Vec<_>>();
    let x = Tensor::from_u32_on(&ids(1), &[b, t], device).unwrap();
    let y = Tensor::from_u32_on(&ids(2), &[b, t], device).unwrap();
    let loss = model.loss(&x, &y, b, t, Some(seed)).unwrap();
    // What data-parallel training sends: each parameter's gradient as the hook sees it.
    let mut hooked = std::collections::HashMap::new();
    let mut hook = |leaf: &Tensor, g: &Tensor| {
        hooked.insert(leaf.id(), g.to_vec());
        Ok(())
    };
    let gr = loss.backward_with_hook(&mut hook).unwrap();
    let grads: Vec<(String, Vec<f32>)> =
        model.parameters().iter().map(|(n, p)| (n.clone(), gr.get(p).expect(n).to_vec())).collect();
    for ((name, g), (_, p)) in grads.iter().zip(model.parameters()) {
        assert_eq!(hooked.get(&p.id()), Some(g), "checkpointed {checkpointed}: the hook's {name}");
    }
    grads
}

fn model_gradients_match_with_dropout(device: Device) {
    let want = model_grads(device, false, 42);
    let got = model_grads(device, true, 42);
    assert_eq!(got.len(), 3 * 9 + 3);
    for ((name, got), (_, want)) in got.iter().zip(&want) {
        assert_close(got, &f64s(want), 1e-6, 1e-5, name);
    }
    // Dropout is on: another seed gives other gradients, so equal ones mean equal masks.
    let other = model_grads(device, true, 43);
    let differs = other.iter().zip(&got).any(|((_, o), (_, g))| o.iter().zip(g).any(|(a, b)| (a - b).abs() > 1e-4));
    assert!(differs, "dropout changed nothing: the test would not see different masks");
}

device_tests!(
    checkpoint_matches_the_whole_graph,
    a_parameter_captured_but_not_passed_is_an_error,
    model_gradients_match_with_dropout
);

/// Losses of a few AdamW steps with dropout on.
fn losses(checkpointed: bool) -> Vec<f32> {
    let cfg = TrainingConfig {
        learning_rate: 3e-3,
        optimizer: OptimizerKind::AdamW,
        warmup_steps: 1,
        total_steps: 5,
        checkpoint_activations: checkpointed,
        ..Default::default()
    };
    let mut t = Trainer::new_on(config(0.2), cfg, Device::Cpu).unwrap();
    assert_eq!(t.model.checkpoint_activations, checkpointed);
    let text = std::fs::read(common::SHAKESPEARE).unwrap();
    (0..5)
        .map(|s| {
            let x: Vec<u32> = text[s * 40..s * 40 + 32].iter().map(|&c| c as u32 % 37).collect();
            let y: Vec<u32> = text[s * 40 + 1..s * 40 + 33].iter().map(|&c| c as u32 % 37).collect();
            t.train_step(&x, &y, 2, 16).unwrap().0
        })
        .collect()
}

#[test]
fn the_loss_curve_is_the_same_with_checkpointing() {
    let (want, got) = (losses(false), losses(true));
    assert!(want[4] < want[0], "the loss should fall: {want:?}");
    assert_close(&got, &f64s(&want), 1e-6, 1e-6, "losses");
}

#[test]
fn the_plan_counts_block_inputs_and_one_recomputed_block() {
    let m = ModelConfig { vocab_size: 1000, ..config(0.0) };
    let plain = TrainingConfig::default();
    let ckpt = TrainingConfig { checkpoint_activations: true, ..Default::default() };
    let (a, b) = (MemoryPlan::new(&m, &plain, 8, 16), MemoryPlan::new(&m, &ckpt, 8, 16));
    // 128 tokens; a block keeps 8·24 + 3·40 + 3·12 = 348 f32 a token, its input 2·24 = 48.
    // The output: 3·128·24 hidden values and 128·1000 logits.
    let output = 3 * 128 * 24 + 128 * 1000;
    assert_eq!(a.activations, 4 * (3 * 128 * 348 + output));
    assert_eq!(b.activations, 4 * (3 * 128 * 48 + 128 * 348 + output));
    assert_eq!((a.weights, a.gradients, a.optimizer), (b.weights, b.gradients, b.optimizer));
    // Old configs, written before the flag, load with it off.
    let mut json = serde_json::to_value(&plain).unwrap();
    json.as_object_mut().unwrap().remove("checkpoint_activations");
    let old: TrainingConfig = serde_json::from_value(json).unwrap();
    assert!(!old.checkpoint_activations);
}
