// Rotary position embedding, rotate-half convention: pair (i, i + D/2) turns by angle(pos, i);
// and rope_qkv's split of the fused projection [B, T, Hq + 2·Hkv, D] into rotated q and k and
// v, and back.
struct Params {
    n: u32,          // pairs: B * T * H * D/2
    t: u32,          // T
    h: u32,          // H (rope_qkv: Hq + 2·Hkv)
    half: u32,       // D/2
    x_off: u32,
    pos_offset: u32, // position of t = 0 (tokens already in the KV cache)
    sign: f32,       // 1 forward, -1 backward (rotation by the negative angle)
    hq: u32,         // rope_qkv: query heads
    hkv: u32,        // rope_qkv: key (and value) heads
    k_off: u32,      // rope_qkv backward: element offsets of dk and dv (dq's is x_off)
    v_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;     // rope_qkv backward: dq
@group(0) @binding(2) var<storage, read> turns: array<f32>; // [D/2, 2]: freq / 2π as hi + lo
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> xk: array<f32>;    // rope_qkv backward: dk
@group(0) @binding(5) var<storage, read> xv: array<f32>;    // rope_qkv backward: dv

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

// Where pair i of head g of row r of the fused projection goes in rope_qkv's output (q, then k,
// then v, each [B·T, heads, D]), and whether it turns (v does not).
struct Dest {
    at: u32,
    turns: bool,
}

fn qkv_dest(r: u32, g: u32, i: u32) -> Dest {
    let d = 2u * p.half;
    let rows = p.n / (p.h * p.half);
    if g < p.hq {
        return Dest((r * p.hq + g) * d + i, true);
    }
    let kv = g - p.hq;
    if kv < p.hkv {
        return Dest(rows * p.hq * d + (r * p.hkv + kv) * d + i, true);
    }
    return Dest(rows * (p.hq + p.hkv) * d + (r * p.hkv + kv - p.hkv) * d + i, false);
}

// y: [B, T, Hq + 2·Hkv, D] -> q, k rotated and v copied, one after another; one thread per pair.
@compute @workgroup_size(256)
fn qkv_rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let k = (wid.x + wid.y * nwg.x) * 256u + lid;
    if k >= p.n { return; }
    let i = k % p.half;
    let head = k / p.half; // flat (b, t, g)
    let r = head / p.h;
    let dst = qkv_dest(r, head % p.h, i);
    let th = select(0.0, angle(p.pos_offset + r % p.t, i), dst.turns);
    let c = cos(th);
    let s = sin(th);
    let e = p.x_off + head * 2u * p.half + i;
    let a = x[e];
    let b = x[e + p.half];
    out[dst.at] = a * c - b * s;
    out[dst.at + p.half] = b * c + a * s;
}

// The backward: dy [B, T, Hq + 2·Hkv, D] from dq, dk (turned back) and dv.
@compute @workgroup_size(256)
fn qkv_rope_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let k = (wid.x + wid.y * nwg.x) * 256u + lid;
    if k >= p.n { return; }
    let i = k % p.half;
    let head = k / p.half;
    let r = head / p.h;
    let g = head % p.h;
    let src = qkv_dest(r, g, i);
    // qkv_dest's offsets count from the start of q; dk and dv are separate tensors.
    let d = 2u * p.half;
    let rows = p.n / (p.h * p.half);
    var a: f32;
    var b: f32;
    if g < p.hq {
        a = x[p.x_off + src.at];
        b = x[p.x_off + src.at + p.half];
    } else if g < p.hq + p.hkv {
        let at = p.k_off + src.at - rows * p.hq * d;
        a = xk[at];
        b = xk[at + p.half];
    } else {
        let at = p.v_off + src.at - rows * (p.hq + p.hkv) * d;
        a = xv[at];
        b = xv[at + p.half];
    }
    let th = select(0.0, angle(p.pos_offset + r % p.t, i), src.turns);
    let c = cos(th);
    let s = -sin(th);
    let e = head * d + i;
    out[e] = a * c - b * s;
    out[e + p.half] = b * c + a * s;
}
