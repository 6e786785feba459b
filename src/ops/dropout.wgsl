// Inverted dropout with a counter-based mask: element i is kept when hash(seed, i) >= p,
// so forward and backward (and CPU and GPU) draw the same mask without storing it.
struct Params {
    n: u32,
    x_off: u32,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32, // p · 2^32
    scale: f32,     // 1 / (1 - p)
    vec: u32,       // 1: n and x_off are multiples of 4, so x and out are read and written as vec4s
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;

// PCG-style integer hash (no state): mixes the index with both halves of the seed.
fn hash(i: u32) -> u32 {
    var h = i * 747796405u + p.seed_lo;
    h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u;
    h = (h >> 22u) ^ h;
    h = (h ^ p.seed_hi) * 2654435769u;
    return h ^ (h >> 16u);
}

// Elements i .. i+3 a thread: one vec4 where p.vec allows, to keep more bytes in flight than one
// element a thread (docs/PERFORMANCE.md).
@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = 4u * flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    let keep = vec4(hash(i), hash(i + 1u), hash(i + 2u), hash(i + 3u)) >= vec4(p.threshold);
    if p.vec == 1u {
        out[i / 4u] = select(vec4(0.0), x[(p.x_off + i) / 4u] * p.scale, keep);
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let e = p.x_off + i + j;
        if i + j < p.n { out[(i + j) / 4u][(i + j) % 4u] = select(0.0, x[e / 4u][e % 4u] * p.scale, keep[j]); }
    }
}
