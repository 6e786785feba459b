//! The `irontensor` command line.

use clap::{Parser, Subcommand};
use irontensor::device::gpu;
use irontensor::{Device, Tensor};
use std::time::Instant;

#[derive(Parser)]
#[command(name = "irontensor", version, about = "Train small LLMs on your own machine")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The devices found, the adapter chosen, its backend, features and limits.
    Info,
    /// Kernel benchmarks.
    Bench {
        /// What to measure: `matmul`.
        #[arg(default_value = "matmul")]
        what: String,
        /// cpu, gpu or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Shapes as MxNxK, comma separated.
        #[arg(long, default_value = "1024x1024x1024,4096x4096x1024")]
        shapes: String,
    },
}

fn main() {
    let start = Instant::now();
    let cli = Cli::parse();
    let result = match (Device::from_env(), cli.command) {
        (Err(e), _) => Err(e.into()),
        (_, Some(Command::Info)) => info(start),
        (_, Some(Command::Bench { what, device, shapes })) => bench(&what, &device, &shapes),
        (_, None) => Err("the training pipeline arrives with the application layer; try `irontensor info`".into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn info(start: Instant) -> CliResult {
    println!("irontensor {}", env!("CARGO_PKG_VERSION"));
    println!("cpu: {} threads (rayon)", rayon::current_num_threads());
    println!("default device: {} (IRONTENSOR_DEVICE)", Device::default_device().name());
    match gpu::context() {
        Err(e) => println!("gpu: none ({e})"),
        Ok(ctx) => {
            let i = &ctx.info;
            println!("gpu: {} ({:?}, {:?})", i.name, i.backend, i.device_type);
            println!("  driver: {} {}", i.driver, i.driver_info);
            for other in &ctx.others {
                println!("  also found: {other}");
            }
            println!("  features used: {:?}", ctx.features);
            let l = &ctx.limits;
            println!("  max storage binding: {} MiB", l.max_storage_buffer_binding_size >> 20);
            println!("  max buffer: {} MiB", l.max_buffer_size >> 20);
            println!("  workgroup storage: {} KiB", l.max_compute_workgroup_storage_size >> 10);
            println!("  invocations per workgroup: {}", l.max_compute_invocations_per_workgroup);
            println!("  submit and wait after every op (IRONTENSOR_SYNC_GPU): {}", ctx.sync_every_op());
            println!("  subgroup size: {}..{}", i.subgroup_min_size, i.subgroup_max_size);
            println!("  f16 cooperative-matrix matmul (IRONTENSOR_MATMUL=coop): {}", ctx.coop_matmul);
            let t = Tensor::from_f32_on(&[1.0, 2.0, 3.0], &[3], Device::Gpu)?;
            let y = irontensor::scale(&t, 2.0)?.to_vec();
            println!("  first GPU result {y:?} after {:.1} ms from process start", start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}

fn bench(what: &str, device: &str, shapes: &str) -> CliResult {
    if what != "matmul" {
        return Err(format!("unknown benchmark {what:?}: expected matmul").into());
    }
    let device = Device::parse(device)?;
    let name = match device {
        Device::Gpu if irontensor::matmul_precision() == irontensor::MatmulPrecision::F16 => "gpu-f16",
        d => d.name(),
    };
    for shape in shapes.split(',') {
        let d: Vec<usize> = shape.split('x').map(|v| v.trim().parse()).collect::<Result<_, _>>()?;
        let [m, n, k] = d[..] else {
            return Err(format!("bad shape {shape:?}: expected MxNxK").into());
        };
        let a = Tensor::randn_on(&[m, k], 1.0, 1, device);
        let b = Tensor::randn_on(&[k, n], 1.0, 2, device);
        // Warm-up (pipelines compile, inputs upload), checked so a wrong kernel reports no speed.
        check_product(&a, &b, &irontensor::matmul(&a, &b)?.to_vec(), [m, n, k])?;
        // `reps` products per submit-and-wait, so the wait's latency is spread over ~0.2 s of work.
        let time = |reps: usize| -> Result<f64, irontensor::Error> {
            let t = Instant::now();
            for _ in 0..reps {
                drop(irontensor::matmul(&a, &b)?);
            }
            irontensor::CommandBatch::sync();
            Ok(t.elapsed().as_secs_f64() / reps as f64)
        };
        let reps = (0.2 / time(1)?).clamp(1.0, 100.0) as usize;
        let mut best = f64::MAX;
        for _ in 0..5 {
            best = best.min(time(reps)?);
        }
        let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
        println!("{{\"bench\":\"matmul\",\"device\":\"{name}\",\"m\":{m},\"n\":{n},\"k\":{k},\"best_ms\":{:.3},\"gflops\":{gflops:.1}}}", best * 1e3);
    }
    Ok(())
}

/// 16 elements of `c` = a·b against f64 dot products.
fn check_product(a: &Tensor, b: &Tensor, c: &[f32], [m, n, k]: [usize; 3]) -> CliResult {
    let (a, b) = (a.to_vec(), b.to_vec());
    let mut rng = irontensor::rng::Rng::new(7);
    for _ in 0..16 {
        let (i, j) = ((rng.uniform() * m as f64) as usize, (rng.uniform() * n as f64) as usize);
        let want: f64 = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum();
        // f32 rounding over K terms of size ~1 (f16 inputs: ~1e-3 relative each).
        let tol = if irontensor::matmul_precision() == irontensor::MatmulPrecision::F16 { 1e-2 } else { 1e-5 };
        if (c[i * n + j] as f64 - want).abs() > tol * (k as f64).sqrt() * 4.0 {
            return Err(format!("matmul {m}x{n}x{k}: C[{i}, {j}] is {} but should be {want}", c[i * n + j]).into());
        }
    }
    Ok(())
}
