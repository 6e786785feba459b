//! GPU work in one training step: dispatches, submits, host reads and uploads, counted on the
//! step after a warm-up step. `cargo run --release --example step_counts -- [seed-tiny|test] [batch] [seq]`
//! (runs on the GPU: IRONTENSOR_DEVICE is ignored). With IRONTENSOR_PROFILE=1 it also lists the
//! dispatches of each op (the profiler's phase guards then add submits and waits of their own).

use irontensor::device::gpu;
use irontensor::profile;
use irontensor::train::OptimizerKind;
use irontensor::{Device, ModelConfig, Precision, Trainer, TrainingConfig};

fn main() -> irontensor::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map_or("seed-tiny", |s| s.as_str());
    let model = match which {
        // The seed-tiny workload.
        "seed-tiny" => ModelConfig {
            vocab_size: 32000,
            hidden_dim: 256,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 4,
            intermediate_dim: 512,
            max_seq_len: 256,
            dropout: 0.0,
            precision: Precision::FP32,
            ..ModelConfig::tiny()
        },
        // The training tests' model.
        _ => ModelConfig {
            vocab_size: 64,
            hidden_dim: 32,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            intermediate_dim: 64,
            max_seq_len: 32,
            tie_weights: false,
            ..ModelConfig::tiny()
        },
    };
    let batch: usize = args.get(2).map_or(16, |s| s.parse().expect("batch"));
    let seq: usize = args.get(3).map_or(model.max_seq_len, |s| s.parse().expect("seq"));
    let config = TrainingConfig { optimizer: OptimizerKind::Lion, ..Default::default() };
    let vocab = model.vocab_size as u32;
    let mut t = Trainer::new_on(model, config, Device::Gpu)?;
    let ids: Vec<u32> = (0..batch * seq).map(|i| (i as u32).wrapping_mul(2_654_435_761) % vocab).collect();
    t.train_step(&ids[..], &ids[..], batch, seq)?;
    profile::reset();
    let before = gpu::counters();
    let (loss, norm) = t.train_step(&ids[..], &ids[..], batch, seq)?;
    let c = gpu::counters() - before;
    println!(
        "{{\"model\":\"{which}\",\"batch\":{batch},\"seq\":{seq},\"dispatches\":{},\"submits\":{},\"reads\":{},\"uploads\":{},\"loss\":{loss},\"norm\":{norm}}}",
        c.dispatches, c.submits, c.reads, c.uploads
    );
    if profile::is_enabled() {
        let mut ops: Vec<_> = profile::ops().into_iter().filter(|o| o.dispatches > 0).collect();
        ops.sort_by_key(|o| std::cmp::Reverse(o.dispatches));
        for o in ops {
            println!("  {:<28} {:>5} calls {:>5} dispatches", o.name, o.count, o.dispatches);
        }
    }
    Ok(())
}
