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

// Thread k's rotation pair: frequency i of flat head `head` (b, t, h) in row `row` (b, t).
struct Pair {
    i: u32,
    head: u32,
    row: u32,
}

fn pair(k: u32) -> Pair {
    let head = k / p.half;
    return Pair(k % p.half, head, head / p.h);
}

// (a, b) turned by th: (a·cos - b·sin, b·cos + a·sin).
fn turn(a: f32, b: f32, th: f32) -> vec2<f32> {
    let c = cos(th);
    let s = sin(th);
    return vec2<f32>(a * c - b * s, b * c + a * s);
}

// x: [B, T, H, D]; one thread per rotation pair.
@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let k = flat_thread(wid, nwg, lid);
    if k >= p.n { return; }
    let q = pair(k);
    let e = q.head * 2u * p.half + q.i;
    let v = turn(x[p.x_off + e], x[p.x_off + e + p.half], p.sign * angle(p.pos_offset + q.row % p.t, q.i));
    out[e] = v.x;
    out[e + p.half] = v.y;
}

// Where pair i of head g of row r of the fused projection belongs in rope_qkv: its part (0 q,
// 1 k, 2 v, each [B·T, heads, D]) and its element offset in that part.
struct Dest {
    part: u32,
    at: u32,
}

fn qkv_dest(r: u32, g: u32, i: u32) -> Dest {
    let d = 2u * p.half;
    if g < p.hq {
        return Dest(0u, (r * p.hq + g) * d + i);
    }
    let kv = g - p.hq;
    if kv < p.hkv {
        return Dest(1u, (r * p.hkv + kv) * d + i);
    }
    return Dest(2u, (r * p.hkv + kv - p.hkv) * d + i);
}

// The angle pair q turns by in rope_qkv: none for v.
fn qkv_angle(q: Pair, part: u32) -> f32 {
    return select(0.0, angle(p.pos_offset + q.row % p.t, q.i), part < 2u);
}

// y: [B, T, Hq + 2·Hkv, D] -> q, k rotated and v copied, one after another; one thread per pair.
@compute @workgroup_size(WG)
fn qkv_rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let k = flat_thread(wid, nwg, lid);
    if k >= p.n { return; }
    let q = pair(k);
    let dst = qkv_dest(q.row, q.head % p.h, q.i);
    // Parts start after the B·T rows of the ones before: q has hq heads a row, k hkv.
    let rows = p.n / (p.h * p.half);
    let heads_before = select(select(p.hq + p.hkv, p.hq, dst.part == 1u), 0u, dst.part == 0u);
    let at = rows * heads_before * 2u * p.half + dst.at;
    let e = p.x_off + q.head * 2u * p.half + q.i;
    let v = turn(x[e], x[e + p.half], qkv_angle(q, dst.part));
    out[at] = v.x;
    out[at + p.half] = v.y;
}

// The backward: dy [B, T, Hq + 2·Hkv, D] from dq, dk (turned back) and dv.
@compute @workgroup_size(WG)
fn qkv_rope_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let k = flat_thread(wid, nwg, lid);
    if k >= p.n { return; }
    let q = pair(k);
    let src = qkv_dest(q.row, q.head % p.h, q.i);
    var a: f32;
    var b: f32;
    if src.part == 0u {
        a = x[p.x_off + src.at];
        b = x[p.x_off + src.at + p.half];
    } else if src.part == 1u {
        a = xk[p.k_off + src.at];
        b = xk[p.k_off + src.at + p.half];
    } else {
        a = xv[p.v_off + src.at];
        b = xv[p.v_off + src.at + p.half];
    }
    let v = turn(a, b, -qkv_angle(q, src.part));
    let e = q.head * 2u * p.half + q.i;
    out[e] = v.x;
    out[e + p.half] = v.y;
}
