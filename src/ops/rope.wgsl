// Rotary position embedding, rotate-half convention: pair (i, i + D/2) turns by angle(pos, i).
struct Params {
    n: u32,          // pairs: B * T * H * D/2
    t: u32,          // T
    h: u32,          // H
    half: u32,       // D/2
    x_off: u32,
    pos_offset: u32, // position of t = 0 (tokens already in the KV cache)
    sign: f32,       // 1 forward, -1 backward (rotation by the negative angle)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> turns: array<f32>; // [D/2, 2]: freq / 2π as hi + lo
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Angle in [-π, π) for position `pos` and frequency `i`, the same f32 steps as rope.rs:
// pos * hi is exact (hi has 8 significant bits), so whole turns drop out before any rounding.
fn angle(pos: u32, i: u32) -> f32 {
    let q = f32(pos);
    let a = q * turns[2u * i];
    var t = (a - floor(a)) + q * turns[2u * i + 1u];
    t = t - floor(t + 0.5);
    return t * 6.283185307179586;
}

// x: [B, T, H, D]; one thread per rotation pair.
@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let k = (wid.x + wid.y * nwg.x) * 256u + lid;
    if k >= p.n { return; }
    let i = k % p.half;
    let head = k / p.half;              // flat (b, t, h)
    let pos = p.pos_offset + (head / p.h) % p.t;
    let th = angle(pos, i);
    let c = cos(th);
    let s = p.sign * sin(th);
    let e = head * 2u * p.half + i;
    let a = x[p.x_off + e];
    let b = x[p.x_off + e + p.half];
    out[e] = a * c - b * s;
    out[e + p.half] = b * c + a * s;
}
