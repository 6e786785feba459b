//! Data-parallel training through the library, and its throughput: the seed-tiny workload
//! (vocab 32000, hidden 256, 4 layers, 4 heads, FFN 512, batch 16 × 256 tokens, Lion, FP32) on
//! random tokens, on the CPU.
//!
//! ```text
//! cargo build --release --features distributed --example data_parallel
//! target/release/examples/data_parallel                 # one process
//! mpirun -n 2 target/release/examples/data_parallel     # two ranks, each 8 of the 16 rows
//! ```
//! Arguments: `[timed steps] [warm-up steps]` (default 5 and 1). Prints one JSON line (rank 0).

use irontensor::dist::Dist;
use irontensor::rng::Rng;
use irontensor::train::OptimizerKind;
use irontensor::{Device, ModelConfig, Result, Trainer, TrainingConfig};
use std::time::Instant;

fn main() -> Result<()> {
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (steps, warmup) = (arg(1, 5), arg(2, 1));
    let (batch, seq) = (16, 256);
    let model = ModelConfig { hidden_dim: 256, intermediate_dim: 512, max_seq_len: seq, ..ModelConfig::tiny() };
    let vocab = model.vocab_size as u64;
    let config = TrainingConfig {
        optimizer: OptimizerKind::Lion,
        learning_rate: 2e-4,
        warmup_steps: 0,
        total_steps: steps + warmup,
        ..Default::default()
    };
    let dist = Dist::start(&irontensor::Settings::from_env()?.dist)?; // None unless started by mpirun
    let make = || Trainer::new_on(model.clone(), config.clone(), Device::Cpu);
    let mut trainer = match &dist {
        Some(d) => Trainer::shared(d, make, Device::Cpu)?,
        None => make()?,
    };
    let (rank, ranks) = dist.as_ref().map_or((0, 1), |d| (d.rank(), d.size()));
    let rows = batch / ranks;
    let mut start = Instant::now();
    let mut loss = 0.0;
    for step in 0..steps + warmup {
        if step == warmup {
            start = Instant::now();
        }
        // The global batch from the step's seed; this rank keeps its rows.
        let mut rng = Rng::new(step as u64);
        let ids: Vec<u32> = (0..batch * (seq + 1)).map(|_| rng.below(vocab) as u32).collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for row in ids.chunks(seq + 1).skip(rank * rows).take(rows) {
            x.extend_from_slice(&row[..seq]);
            y.extend_from_slice(&row[1..]);
        }
        loss = trainer.train_step(&x, &y, rows, seq)?.0;
    }
    let seconds = start.elapsed().as_secs_f64();
    // One all-reduce of all the gradients at once, alone, timed: the communication of a step.
    let values = trainer.all_reduce_plan().map_or(0, |(_, values)| values);
    let mut allreduce_ms = 0.0;
    if let Some(d) = &dist {
        let t = Instant::now();
        for _ in 0..3 {
            d.allreduce("timing", vec![1.0; values])?;
        }
        allreduce_ms = t.elapsed().as_secs_f64() * 1e3 / 3.0;
    }
    if rank == 0 {
        println!(
            "{{\"ranks\":{ranks},\"threads_per_rank\":{},\"steps\":{steps},\"step_ms\":{:.0},\"tokens_per_s\":{:.0},\
             \"allreduce_bytes_per_step\":{},\"allreduce_ms\":{allreduce_ms:.1},\"loss\":{loss}}}",
            rayon::current_num_threads(),
            seconds * 1e3 / steps as f64,
            (batch * seq * steps) as f64 / seconds,
            values * 4
        );
    }
    if let Some(d) = &dist {
        d.finalize()?;
    }
    Ok(())
}
