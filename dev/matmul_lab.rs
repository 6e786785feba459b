//! Matmul kernel lab: times WGSL matmul variants read at run time (so they can be edited on a
//! machine without Rust), with and without wgpu's bounds checks, checked against an f64 reference.
//! Kernels: src/ops/matmul.wgsl, src/ops/matmul_wide.wgsl and every dev/lab/*.wgsl with the same
//! entry points, each after src/ops/matmul_common.wgsl (Params, bindings, reads and writes) unless
//! it declares its own `struct Params`. The output tile comes from its `const BM` and `const BN`.
//! `cargo run --release --example matmul_lab -- [SHAPE ...]`, SHAPE = MxNxK[xBATCH][:nn|nt|tn|tt][:splits].
//! A batch runs B products with their own A and B; outputs are all checked when the product is small.
//! LAB_DIR=dir reads the variants from another folder; LAB_REPS=1 for a correctness run on lavapipe.

use irontensor::device::gpu;
use std::time::Instant;

struct Shape {
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    ta: bool,
    tb: bool,
    splits: usize,
}

fn parse(s: &str) -> Shape {
    let mut parts = s.split(':');
    let d: Vec<usize> = parts.next().unwrap().split('x').map(|v| v.parse().unwrap()).collect();
    let t = parts.next().unwrap_or("nn").as_bytes().to_vec();
    let splits = parts.next().map_or(1, |v| v.parse().unwrap());
    let batch = d.get(3).copied().unwrap_or(1);
    Shape { m: d[0], n: d[1], k: d[2], batch, ta: t[0] == b't', tb: t[1] == b't', splits }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = irontensor::rng::Rng::new(seed);
    (0..n).map(|_| (r.uniform() * 2.0 - 1.0) as f32).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shapes: Vec<Shape> = if args.is_empty() {
        ["4096x4096x4096:nn", "16384x384x384:nt", "384x384x16384:tn:1", "384x384x16384:tn:28"]
            .iter()
            .map(|s| parse(s))
            .collect()
    } else {
        args.iter().map(|s| parse(s)).collect()
    };
    let ctx = gpu::context().expect("no GPU");
    println!("adapter: {}", ctx.info.name);
    let dir = std::env::var("LAB_DIR").unwrap_or_else(|_| "dev/lab".into());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".wgsl"))
        .collect();
    files.sort();
    files.splice(0..0, ["src/ops/matmul.wgsl".to_string(), "src/ops/matmul_wide.wgsl".to_string()]);
    let common = std::fs::read_to_string("src/ops/matmul_common.wgsl").unwrap();
    let dev = &ctx.device;
    for file in &files {
        let mut src = std::fs::read_to_string(file).unwrap();
        if !src.contains("struct Params") {
            src = format!("{common}{src}");
        }
        let split_k = src.contains("splits: u32");
        let tile = tile(&src);
        for checked in [true, false] {
            let desc =
                wgpu::ShaderModuleDescriptor { label: None, source: wgpu::ShaderSource::Wgsl(src.clone().into()) };
            let module = if checked {
                dev.create_shader_module(desc)
            } else {
                // SAFETY: a lab experiment; results are checked against the reference below.
                unsafe { dev.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
            };
            for s in &shapes {
                if s.splits > 1 && !split_k {
                    continue;
                }
                let entry = format!("matmul_{}{}", if s.ta { "t" } else { "n" }, if s.tb { "t" } else { "n" });
                let (ms, err) = run(dev, &ctx.queue, &module, &entry, s, split_k, tile);
                let gflops = 2.0 * (s.batch * s.m * s.n * s.k) as f64 / ms / 1e6;
                println!(
                    "{file} checks={checked} {}x{}x{}x{} {entry} splits={}: {ms:.3} ms {gflops:.0} GFLOP/s max_err={err:.2e}",
                    s.m, s.n, s.k, s.batch, s.splits
                );
            }
        }
    }
}

/// The output tile (rows, columns) from the kernel's `const BM` and `const BN`, else 128×128.
fn tile(src: &str) -> (usize, usize) {
    let get = |name: &str| {
        let line = src.lines().find_map(|l| l.trim().strip_prefix(&format!("const {name}: u32 = ")));
        line.map_or(128, |v| v.trim_end_matches(';').trim_end_matches('u').parse().unwrap())
    };
    (get("BM"), get("BN"))
}

fn buffer<T: bytemuck::Pod>(dev: &wgpu::Device, data: &[T], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(data),
        usage: usage | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

fn entries<'a>(bufs: &[(u32, &'a wgpu::Buffer)]) -> Vec<wgpu::BindGroupEntry<'a>> {
    bufs.iter().map(|(i, b)| wgpu::BindGroupEntry { binding: *i, resource: b.as_entire_binding() }).collect()
}

fn pass(enc: &mut wgpu::CommandEncoder, pipe: &wgpu::ComputePipeline, bind: &wgpu::BindGroup, groups: [u32; 3]) {
    let mut p = enc.begin_compute_pass(&Default::default());
    p.set_pipeline(pipe);
    p.set_bind_group(0, bind, &[]);
    p.dispatch_workgroups(groups[0], groups[1], groups[2]);
}

fn run(
    dev: &wgpu::Device,
    queue: &wgpu::Queue,
    module: &wgpu::ShaderModule,
    entry: &str,
    s: &Shape,
    split_k: bool,
    tile: (usize, usize),
) -> (f64, f64) {
    let (m, n, k, batch) = (s.m, s.n, s.k, s.batch);
    let a = random(batch * m * k, 1);
    let b = random(batch * k * n, 2);
    let storage = wgpu::BufferUsages::STORAGE;
    // Buffers are read as vec4s: pad them to a multiple of 4 with NaN, which no correct read touches.
    let padded = |v: &[f32]| [v, &[f32::NAN; 3][..(4 - v.len() % 4) % 4]].concat();
    let (ab, bb) = (buffer(dev, &padded(&a), storage), buffer(dev, &padded(&b), storage));
    let cb = buffer(dev, &padded(&vec![0.0; batch * m * n * s.splits]), storage);
    let ks = k.div_ceil(s.splits).div_ceil(8) * 8;
    let (a_bs, b_bs) = if batch > 1 { (m * k, k * n) } else { (0, 0) };
    let mut params = [m, n, k, 0, 0, a_bs, b_bs].map(|v| v as u32).to_vec();
    if split_k {
        let aligned = [m, n, k].iter().all(|v| v % 4 == 0);
        params.extend([s.splits as u32, ks as u32, aligned as u32, 0, 0]); // C at offset 0, C = A·B
    }
    let pb = buffer::<u32>(dev, &params, wgpu::BufferUsages::UNIFORM);
    let pipe = |e: &str| {
        dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module,
            entry_point: Some(e),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let mm = pipe(entry);
    let mm_bind = dev.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &mm.get_bind_group_layout(0),
        entries: &entries(&[(0, &pb), (1, &ab), (2, &bb), (3, &cb)]),
    });
    let groups = [n.div_ceil(tile.1) as u32, m.div_ceil(tile.0) as u32, (s.splits * batch) as u32];
    let record = |enc: &mut wgpu::CommandEncoder| pass(enc, &mm, &mm_bind, groups);
    let go = |reps: usize| {
        let mut enc = dev.create_command_encoder(&Default::default());
        for _ in 0..reps {
            record(&mut enc);
        }
        let t = Instant::now();
        queue.submit([enc.finish()]);
        dev.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        t.elapsed().as_secs_f64()
    };
    go(1);
    let flops = 2.0 * (batch * m * n * k) as f64;
    // LAB_REPS=1 keeps a correctness run on a slow adapter (lavapipe) short.
    let reps = std::env::var("LAB_REPS").map_or(((2e12 / flops) as usize).clamp(3, 200), |v| v.parse().unwrap());
    let ms = (0..3).map(|_| go(reps) / reps as f64 * 1e3).fold(f64::MAX, f64::min);
    // Check every output of a small product, else 64 samples (the split-K slices summed here),
    // against an f64 reference. Any NaN makes the reported error NaN.
    let size = (batch * m * n * s.splits * 4) as u64;
    let staging = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&cb, 0, &staging, 0, size);
    queue.submit([enc.finish()]);
    staging.slice(..).map_async(wgpu::MapMode::Read, |_| {});
    dev.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let parts: Vec<f32> = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    let size = batch * m * n;
    let got: Vec<f32> = (0..size).map(|i| (0..s.splits).map(|p| parts[p * size + i]).sum()).collect();
    let mut err = 0.0f64;
    let mut r = irontensor::rng::Rng::new(3);
    let all = size * k <= 1 << 27;
    for t in 0..if all { size } else { 64 } {
        let (bi, i, j) = if all {
            (t / (m * n), t / n % m, t % n)
        } else if t < 2 {
            (t * (batch - 1), t * (m - 1), t * (n - 1))
        } else {
            (r.below(batch as u64) as usize, r.below(m as u64) as usize, r.below(n as u64) as usize)
        };
        let (a, b) = (&a[bi * m * k..], &b[bi * k * n..]);
        let mut want = 0.0f64;
        for p in 0..k {
            let av = if s.ta { a[p * m + i] } else { a[i * k + p] };
            let bv = if s.tb { b[j * k + p] } else { b[p * n + j] };
            want += av as f64 * bv as f64;
        }
        let e = (got[(bi * m + i) * n + j] as f64 - want).abs() / (1.0 + want.abs());
        if e.is_nan() || e > err {
            err = e;
        }
    }
    (ms, err)
}
