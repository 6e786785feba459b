//! `irontensor info`: the devices found, the adapter chosen, its backend, features and limits.

use crate::device::gpu;
use crate::{Device, Result, Tensor};
use std::time::Instant;

/// Prints what `irontensor info` shows; `start` is when the process started.
pub fn info(start: Instant) -> Result<()> {
    println!("irontensor {}", env!("CARGO_PKG_VERSION"));
    println!("cpu: {} threads (rayon)", rayon::current_num_threads());
    println!("default device: {} (IRONTENSOR_DEVICE)", Device::default_device().name());
    for (k, name) in gpu::adapter_names().iter().enumerate() {
        println!("adapter {k}: {name} (IRONTENSOR_GPU={k} or --gpu {k} takes it)");
    }
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
            let memory = ctx.memory_bytes().map_or("not known".into(), crate::train::gb);
            println!("  memory: {memory} (IRONTENSOR_GPU_MEMORY overrides)");
            println!(
                "  max storage binding: {} MiB (bound at once: {} MiB, IRONTENSOR_MAX_BINDING)",
                l.max_storage_buffer_binding_size >> 20,
                ctx.max_binding() >> 20
            );
            println!("  max buffer: {} MiB", l.max_buffer_size >> 20);
            println!("  workgroup storage: {} KiB", l.max_compute_workgroup_storage_size >> 10);
            println!("  invocations per workgroup: {}", l.max_compute_invocations_per_workgroup);
            println!("  submit and wait after every op (IRONTENSOR_SYNC_GPU): {}", ctx.sync_every_op());
            println!("  subgroup size: {}..{}", i.subgroup_min_size, i.subgroup_max_size);
            println!("  f16 cooperative-matrix matmul (IRONTENSOR_MATMUL=coop): {}", ctx.coop_matmul);
            println!("  pipeline cache: {}", ctx.pipeline_cache());
            let t = Tensor::from_f32_on(&[1.0, 2.0, 3.0], &[3], Device::Gpu)?;
            let y = crate::scale(&t, 2.0)?.to_vec();
            println!("  first GPU result {y:?} after {:.1} ms from process start", start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(())
}
