//! `MemoryPlan` against a GPU run's measured peak. A binary of its own: tests running beside
//! it in one process would add to the pool's peak.

mod common;
use irontensor::nn::ModelConfig;
use irontensor::train::{MemoryPlan, OptimizerKind, Trainer, TrainingConfig};
use irontensor::Precision;

/// `MemoryPlan`, which `irontensor train` checks against the device before it starts, is
/// within a quarter of the peak a GPU run measures (the buffer pool's live bytes).
#[test]
fn the_memory_plan_matches_the_measured_peak() {
    let Some(gpu) = common::gpu() else { return };
    let ctx = irontensor::device::gpu::context().unwrap();
    for (bf16, optimizer, layers) in [(false, OptimizerKind::AdamW, 3), (true, OptimizerKind::Lion, 2)] {
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
        let cfg = TrainingConfig { optimizer, use_bf16: bf16, total_steps: 2, ..Default::default() };
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
        eprintln!("bf16 {bf16}: plan {} vs measured peak {peak}: {ratio:.3}", plan.describe());
        assert!((0.75..1.25).contains(&ratio), "bf16 {bf16}: plan {} vs measured peak {peak} bytes", plan.describe());
    }
}
