// Inverted dropout with a counter-based mask: element i is kept when hash(seed, i) >= p,
// so forward and backward (and CPU and GPU) draw the same mask without storing it.
struct Params {
    n: u32,
    x_off: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32, // p · 2^32
    scale: f32,     // 1 / (1 - p)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// PCG-style integer hash (no state): mixes the index with both halves of the seed.
fn hash(i: u32) -> u32 {
    var h = i * 747796405u + p.seed_lo;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    h = (h >> 22u) ^ h;
    h = (h ^ p.seed_hi) * 2654435769u;
    return h ^ (h >> 16u);
}

@compute @workgroup_size(256)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= p.n { return; }
    out[i] = select(0.0, x[p.x_off + i] * p.scale, hash(i) >= p.threshold);
}
