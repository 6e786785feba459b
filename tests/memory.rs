//! `MemoryPlan` against a GPU run's measured peak. A binary of its own: tests running beside
//! it in one process would add to the pool's peak.

mod common;
use irontensor::nn::ModelConfig;
use irontensor::train::{MemoryPlan, OptimizerKind, Trainer, TrainingConfig};
use irontensor::Precision;

/// `MemoryPlan`, which `irontensor train` checks against the device before it starts, is
/// within a quarter of the peak a GPU run measures (the buffer pool's live bytes); activation
/// checkpointing lowers the peak by about what the plan says.
#[test]
fn the_memory_plan_matches_the_measured_peak() {
    let Some(gpu) = common::gpu() else { return };
    let ctx = irontensor::device::gpu::context().unwrap();
    let mut peaks = Vec::new();
    let cases = [
        (false, OptimizerKind::AdamW, 3, false),
        (false, OptimizerKind::AdamW, 3, true),
        (true, OptimizerKind::Lion, 2, false),
    ];
    for (bf16, optimizer, layers, checkpoint_activations) in cases {
        let model = ModelConfig {
            vocab_size: 512,
            hidden_dim: 128,
            num_layers: layers,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_dim: 352,
            max_seq_len: 128,
            rope_base: 10000.0,
            norm_eps: 1e-5,
            tie_weights: false,
            precision: Precision::FP32,
            dropout: 0.0,
            ..ModelConfig::tiny()
        };
        let cfg =
            TrainingConfig { optimizer, use_bf16: bf16, total_steps: 2, checkpoint_activations, ..Default::default() };
        let plan = MemoryPlan::new(&model, &cfg, 4, 128);
        let mut t = Trainer::new_on(model, cfg, gpu).unwrap();
        irontensor::CommandBatch::sync();
        ctx.reset_peak_memory();
        let text = std::fs::read(common::SHAKESPEARE).unwrap();
        let x: Vec<u32> = text[..512].iter().map(|&b| b as u32).collect();
        let y: Vec<u32> = text[1..513].iter().map(|&b| b as u32).collect();
        for _ in 0..2 {
            t.train_step(&x, &y, 4, 128).unwrap();
        }
        irontensor::CommandBatch::sync();
        let (_, peak) = ctx.memory();
        let ratio = plan.total() as f64 / peak as f64;
        let what = format!("bf16 {bf16}, checkpointing {checkpoint_activations}");
        eprintln!("{what}: plan {} vs measured peak {peak}: {ratio:.3}", plan.describe());
        assert!((0.75..1.25).contains(&ratio), "{what}: plan {} vs measured peak {peak} bytes", plan.describe());
        peaks.push((plan.total(), peak));
        drop(t);
        irontensor::CommandBatch::sync();
    }
    let (planned, measured) = (peaks[0].0 - peaks[1].0, peaks[0].1 as f64 - peaks[1].1 as f64);
    let ratio = measured / planned as f64;
    eprintln!("checkpointing saves {measured} bytes, the plan says {planned}: {ratio:.3}");
    assert!((0.6..1.4).contains(&ratio), "checkpointing saves {measured} bytes of the peak, the plan says {planned}");
}
