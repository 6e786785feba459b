// FlashAttention: the forward (online softmax) and the backward as two kernels: dQ (with
// delta = rowsum(dO ∘ O)), then dK and dV (one dispatch; both need delta).
// One thread owns one row (a query, or a key for dK/dV): that row of the inputs it needs and its
// output row live in registers (`Row`), padded to DH columns (DH, 64 or 128, is prepended by the host).
// A workgroup of WG rows walks the other side (keys, or queries) in tiles of TR rows staged in
// shared memory, which every thread reads at the same address (a broadcast). So the softmax of a
// row is one thread's, and no reduction or barrier runs inside a tile.
struct Params {
    b: u32,
    hq: u32,
    hkv: u32,
    tq: u32,
    tk: u32,
    d: u32,
    causal: u32,    // 1: query t sees keys j <= t + shift
    shift: u32,     // tk - tq
    scale: f32,     // 1 / sqrt(d)
    q_off: u32,     // element offsets of the inputs
    k_off: u32,
    v_off: u32,
    do_off: u32,
    lse_off: u32,
    aux_off: u32,
    out2: u32,      // where the second output starts in out: LSE after O, delta after dQ, dV after dK
    q_hs: u32,      // element strides between heads and between positions of q, dO, O, dQ:
    q_rs: u32,      // [B, H, T, D]: T·D and D; [B, T, H, D]: D and H·D
    kv_hs: u32,     // the same for k, v, dK, dV
    kv_rs: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;     // [B, Hq, Tq, D] or [B, Tq, Hq, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;     // [B, Hkv, Tk, D] or [B, Tk, Hkv, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;     // as k
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // O+LSE, dQ+delta, or dK+dV
@group(0) @binding(5) var<storage, read> dout: array<f32>;  // as q (backward)
@group(0) @binding(6) var<storage, read> aux: array<f32>;   // O for dQ, delta [B, Hq, Tq] for dK/dV
@group(0) @binding(7) var<storage, read> lse: array<f32>;   // [B, Hq, Tq] (backward)

const WG: u32 = 128u;         // rows per workgroup, one per thread
const DV: u32 = DH / 4u;      // vec4s per padded row
const TR: u32 = 1024u / DH;   // rows per staged tile: two take 8 KiB (16 rows measured 7% faster than 32)
const B_TILE: u32 = TR * DV;  // where the second tile starts in `tiles`
const NEG: f32 = -1.0e30;
// The forward rescales its sums only when a score passes the running maximum by this much (so
// exp(s - m) stays below e^8): rare after the first keys, where a strict maximum would rescale
// whenever any thread of a subgroup saw a new maximum.
const SLACK: f32 = 8.0;
const Q: u32 = 0u; // which input `elem` reads
const K: u32 = 1u;
const V: u32 = 2u;
const DO: u32 = 3u;
const AUX: u32 = 4u;

// Two tiles of TR padded rows: rows of K (or Q) from 0, of V (or dO) from B_TILE.
var<workgroup> tiles: array<vec4<f32>, 512>;
var<workgroup> tile_lse: array<f32, TR>;
var<workgroup> tile_delta: array<f32, TR>;

fn elem(which: u32, at: u32) -> f32 {
    switch which {
        case 0u: { return q[p.q_off + at]; }
        case 1u: { return k[p.k_off + at]; }
        case 2u: { return v[p.v_off + at]; }
        case 3u: { return dout[p.do_off + at]; }
        default: { return aux[p.aux_off + at]; }
    }
}

// Keys that queries before t_end can see.
fn key_end(t_end: u32) -> u32 {
    if p.causal == 1u { return min(p.tk, t_end + p.shift); }
    return p.tk;
}

// A row padded to DH columns, as matrices so that every access has a constant index and the
// row stays in registers (an array indexed in a loop may not); m4..m7 are used only when DH = 128.
struct Row {
    m0: mat4x4<f32>,
    m1: mat4x4<f32>,
    m2: mat4x4<f32>,
    m3: mat4x4<f32>,
    m4: mat4x4<f32>,
    m5: mat4x4<f32>,
    m6: mat4x4<f32>,
    m7: mat4x4<f32>,
}

// Columns c0 .. c0 + 15 of input `which` from element `at` (row start), times scale.
fn load_m(which: u32, at: u32, c0: u32, scale: f32) -> mat4x4<f32> {
    var m = mat4x4<f32>();
    for (var c = 0u; c < 4u; c++) {
        for (var i = 0u; i < 4u; i++) {
            if c0 + 4u * c + i < p.d { m[c][i] = elem(which, at + c0 + 4u * c + i) * scale; }
        }
    }
    return m;
}

// One row of input `which` from element `at`; zeros for a thread without a row.
fn load_row(which: u32, at: u32, live: bool, scale: f32) -> Row {
    var r: Row;
    if live {
        r.m0 = load_m(which, at, 0u, scale);
        r.m1 = load_m(which, at, 16u, scale);
        r.m2 = load_m(which, at, 32u, scale);
        r.m3 = load_m(which, at, 48u, scale);
        if DH > 64u {
            r.m4 = load_m(which, at, 64u, scale);
            r.m5 = load_m(which, at, 80u, scale);
            r.m6 = load_m(which, at, 96u, scale);
            r.m7 = load_m(which, at, 112u, scale);
        }
    }
    return r;
}

// Stages `rows` rows of input `which`, `rs` elements apart from element `at`, into the tile at
// `base`, zero-padded.
fn stage(which: u32, at: u32, rs: u32, rows: u32, base: u32, lid: u32) {
    for (var e = lid; e < TR * DV; e += WG) {
        let r = e / DV;
        var x = vec4<f32>();
        for (var i = 0u; i < 4u; i++) {
            let c = (e % DV) * 4u + i;
            if r < rows && c < p.d { x[i] = elem(which, at + r * rs + c); }
        }
        tiles[base + e] = x;
    }
}

// Σ m[c] ∘ (tile vec4 at + c), as a vec4 of partial sums.
fn mdot(m: mat4x4<f32>, at: u32) -> vec4<f32> {
    return m[0] * tiles[at] + m[1] * tiles[at + 1u] + m[2] * tiles[at + 2u] + m[3] * tiles[at + 3u];
}

// x · (tile row at vec4 index `at`).
fn dot_row(x: Row, at: u32) -> f32 {
    var s = (mdot(x.m0, at) + mdot(x.m1, at + 4u)) + (mdot(x.m2, at + 8u) + mdot(x.m3, at + 12u));
    if DH > 64u {
        s += (mdot(x.m4, at + 16u) + mdot(x.m5, at + 20u)) + (mdot(x.m6, at + 24u) + mdot(x.m7, at + 28u));
    }
    return s.x + s.y + s.z + s.w;
}

fn maxpy(m: mat4x4<f32>, a: f32, at: u32) -> mat4x4<f32> {
    let t = vec4(a);
    return mat4x4<f32>(fma(t, tiles[at], m[0]), fma(t, tiles[at + 1u], m[1]), fma(t, tiles[at + 2u], m[2]),
                       fma(t, tiles[at + 3u], m[3]));
}

// y + a · (tile row at vec4 index `at`).
fn axpy_row(y: Row, a: f32, at: u32) -> Row {
    var r = y;
    r.m0 = maxpy(y.m0, a, at);
    r.m1 = maxpy(y.m1, a, at + 4u);
    r.m2 = maxpy(y.m2, a, at + 8u);
    r.m3 = maxpy(y.m3, a, at + 12u);
    if DH > 64u {
        r.m4 = maxpy(y.m4, a, at + 16u);
        r.m5 = maxpy(y.m5, a, at + 20u);
        r.m6 = maxpy(y.m6, a, at + 24u);
        r.m7 = maxpy(y.m7, a, at + 28u);
    }
    return r;
}

fn scale_row(y: Row, a: f32) -> Row {
    return Row(y.m0 * a, y.m1 * a, y.m2 * a, y.m3 * a, y.m4 * a, y.m5 * a, y.m6 * a, y.m7 * a);
}

fn mdot_m(x: mat4x4<f32>, y: mat4x4<f32>) -> f32 {
    return dot(x[0], y[0]) + dot(x[1], y[1]) + dot(x[2], y[2]) + dot(x[3], y[3]);
}

// x · y.
fn dot_rows(x: Row, y: Row) -> f32 {
    let s = mdot_m(x.m0, y.m0) + mdot_m(x.m1, y.m1) + mdot_m(x.m2, y.m2) + mdot_m(x.m3, y.m3);
    return s + mdot_m(x.m4, y.m4) + mdot_m(x.m5, y.m5) + mdot_m(x.m6, y.m6) + mdot_m(x.m7, y.m7);
}

fn store_m(m: mat4x4<f32>, at: u32, c0: u32) {
    for (var c = 0u; c < 4u; c++) {
        for (var i = 0u; i < 4u; i++) {
            if c0 + 4u * c + i < p.d { out[at + c0 + 4u * c + i] = m[c][i]; }
        }
    }
}

// Writes the first d columns of x · scale to out from element `at`.
fn store_row(x: Row, at: u32, scale: f32) {
    let y = scale_row(x, scale);
    store_m(y.m0, at, 0u);
    store_m(y.m1, at, 16u);
    store_m(y.m2, at, 32u);
    store_m(y.m3, at, 48u);
    if DH > 64u {
        store_m(y.m4, at, 64u);
        store_m(y.m5, at, 80u);
        store_m(y.m6, at, 96u);
        store_m(y.m7, at, 112u);
    }
}

// A query thread of the forward and dQ kernels: workgroup (WG queries, head, batch), the blocks
// in reverse so that the longest (causal) rows start first.
struct Query {
    live: bool,
    row: u32,   // of LSE and delta
    at: u32,    // element offset of its row in q, dO, O, dQ
    kv: u32,    // element offset of its kv head's first row
    keys: u32,  // keys the workgroup's queries see (its loop over key tiles)
    sees: u32,  // keys this thread's query sees (0 without a query)
}

fn query(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Query {
    let t0 = (nwg.x - 1u - wid.x) * WG;
    let t = t0 + lid;
    let live = t < p.tq;
    let row = (wid.z * p.hq + wid.y) * p.tq + t;
    let kv = kv_at(wid.z, wid.y / (p.hq / p.hkv), 0u);
    let sees = select(0u, key_end(t + 1u), live);
    return Query(live, row, q_at(wid.z, wid.y, t), kv, key_end(min(p.tq, t0 + WG)), sees);
}

// Stages the tiles of keys and values from key k0 (after the previous tiles are read).
fn stage_keys(kv: u32, k0: u32, lid: u32) {
    workgroupBarrier();
    stage(K, kv + k0 * p.kv_rs, p.kv_rs, min(TR, p.tk - k0), 0u, lid);
    stage(V, kv + k0 * p.kv_rs, p.kv_rs, min(TR, p.tk - k0), B_TILE, lid);
    workgroupBarrier();
}

// Element offsets of row t of query head h, and of row j of kv head h, in batch b.
fn q_at(b: u32, h: u32, t: u32) -> u32 {
    return b * p.hq * p.tq * p.d + h * p.q_hs + t * p.q_rs;
}

fn kv_at(b: u32, h: u32, j: u32) -> u32 {
    return b * p.hkv * p.tk * p.d + h * p.kv_hs + j * p.kv_rs;
}

// Forward: workgroup (WG queries, head, batch); O and the log-sum-exp per query.
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let qy = query(wid, nwg, lid);
    let qr = load_row(Q, qy.at, qy.live, p.scale);
    var o: Row;
    var m = NEG;
    var l = 0.0;
    for (var k0 = 0u; k0 < qy.keys; k0 += TR) {
        stage_keys(qy.kv, k0, lid);
        for (var j = 0u; j < min(TR, max(qy.sees, k0) - k0); j++) {
            let s = dot_row(qr, j * DV);
            if s > m + SLACK {
                let a = exp(m - s);
                l *= a;
                o = scale_row(o, a);
                m = s;
            }
            let pj = exp(s - m);
            l += pj;
            o = axpy_row(o, pj, B_TILE + j * DV);
        }
    }
    if qy.live {
        store_row(o, qy.at, 1.0 / l);
        out[p.out2 + qy.row] = m + log(l);
    }
}

// dQ = scale · Σ_j dS_j K_j with dS = P ∘ (dP - delta), P = exp(S - lse), dP = dO·Vᵀ: workgroup
// (WG queries, head, batch). Also writes delta = dO·O per query, for the dK/dV kernel.
@compute @workgroup_size(WG)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let qy = query(wid, nwg, lid);
    let qr = load_row(Q, qy.at, qy.live, p.scale);
    let dr = load_row(DO, qy.at, qy.live, 1.0);
    let delta = dot_rows(dr, load_row(AUX, qy.at, qy.live, 1.0));
    var ls = 0.0;
    if qy.live {
        out[p.out2 + qy.row] = delta;
        ls = lse[p.lse_off + qy.row];
    }
    var dq: Row;
    for (var k0 = 0u; k0 < qy.keys; k0 += TR) {
        stage_keys(qy.kv, k0, lid);
        for (var j = 0u; j < min(TR, max(qy.sees, k0) - k0); j++) {
            let pj = exp(dot_row(qr, j * DV) - ls);
            let ds = pj * (dot_row(dr, B_TILE + j * DV) - delta);
            dq = axpy_row(dq, ds, j * DV);
        }
    }
    if qy.live { store_row(dq, qy.at, p.scale); }
}

// dK = scale · Σ_t dS_t Q_t and dV = Σ_t P_t dO_t over the queries of every query head of the
// GQA group: workgroup (WG keys, kv head, batch) computes dK for grid y < Hkv, else dV.
@compute @workgroup_size(WG)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let is_dv = wid.y >= p.hkv;
    let kvh = wid.y % p.hkv;
    let group = p.hq / p.hkv;
    let j0 = wid.x * WG;
    let j = j0 + lid;
    let live = j < p.tk;
    let at = kv_at(wid.z, kvh, j);
    let kr = load_row(K, at, live, p.scale);
    let vr = load_row(V, at, live && !is_dv, 1.0);
    var g: Row;
    // The first query that sees key j (and key j0, for the workgroup).
    var t_first = 0u;
    var my_first = select(p.tq, 0u, live);
    if p.causal == 1u {
        t_first = max(j0, p.shift) - p.shift;
        if live { my_first = max(j, p.shift) - p.shift; }
    }
    for (var hh = 0u; hh < group; hh++) {
        let h = kvh * group + hh;
        let qrow0 = (wid.z * p.hq + h) * p.tq; // of LSE and delta
        for (var t0 = t_first; t0 < p.tq; t0 += TR) {
            let rows = min(TR, p.tq - t0);
            workgroupBarrier();
            stage(Q, q_at(wid.z, h, t0), p.q_rs, rows, 0u, lid);
            stage(DO, q_at(wid.z, h, t0), p.q_rs, rows, B_TILE, lid);
            for (var i = lid; i < rows; i += WG) {
                tile_lse[i] = lse[p.lse_off + qrow0 + t0 + i];
                tile_delta[i] = aux[p.aux_off + qrow0 + t0 + i];
            }
            workgroupBarrier();
            for (var i = min(rows, max(my_first, t0) - t0); i < rows; i++) {
                let pt = exp(dot_row(kr, i * DV) - tile_lse[i]);
                if is_dv {
                    g = axpy_row(g, pt, B_TILE + i * DV);
                } else {
                    let ds = pt * (dot_row(vr, B_TILE + i * DV) - tile_delta[i]);
                    g = axpy_row(g, ds, i * DV);
                }
            }
        }
    }
    if live {
        if is_dv {
            store_row(g, p.out2 + at, 1.0);
        } else {
            store_row(g, at, p.scale);
        }
    }
}
