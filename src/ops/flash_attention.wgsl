// FlashAttention: the forward (online softmax) and the backward as two kernels: dQ (with
// delta = rowsum(dO ∘ O)), then dK and dV (one dispatch; both need delta).
// One thread owns one row (a query, or a key for dK/dV): that row of the inputs it needs and its
// output row live in registers, padded to DH columns (DH, 64 or 128, is prepended by the host).
// A workgroup of 64 rows walks the other side (keys, or queries) in tiles of TR rows staged in
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
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;     // [B, Hq, Tq, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;     // [B, Hkv, Tk, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;     // [B, Hkv, Tk, D]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // O+LSE, dQ+delta, or dK+dV
@group(0) @binding(5) var<storage, read> dout: array<f32>;  // [B, Hq, Tq, D] (backward)
@group(0) @binding(6) var<storage, read> aux: array<f32>;   // O for dQ, delta [B, Hq, Tq] for dK/dV
@group(0) @binding(7) var<storage, read> lse: array<f32>;   // [B, Hq, Tq] (backward)

const WG: u32 = 64u;          // rows per workgroup, one per thread
const DV: u32 = DH / 4u;      // vec4s per padded row
const TR: u32 = 2048u / DH;   // rows per staged tile: two tiles take 16 KiB
const B_TILE: u32 = 512u;     // where the second tile starts in `tiles`
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
var<workgroup> tiles: array<vec4<f32>, 1024>;
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

// One padded row of input `which` from element `at`; zeros for a thread without a row.
fn load_row(which: u32, at: u32, live: bool, scale: f32) -> array<vec4<f32>, DV> {
    var r: array<vec4<f32>, DV>;
    if live {
        for (var c = 0u; c < DV; c++) {
            for (var i = 0u; i < 4u; i++) {
                if 4u * c + i < p.d { r[c][i] = elem(which, at + 4u * c + i) * scale; }
            }
        }
    }
    return r;
}

// Stages `rows` rows of input `which` from element `at` into the tile at `base`, zero-padded.
fn stage(which: u32, at: u32, rows: u32, base: u32, lid: u32) {
    for (var e = lid; e < TR * DV; e += WG) {
        let r = e / DV;
        var x = vec4<f32>();
        for (var i = 0u; i < 4u; i++) {
            let c = (e % DV) * 4u + i;
            if r < rows && c < p.d { x[i] = elem(which, at + r * p.d + c); }
        }
        tiles[base + e] = x;
    }
}

// x · (tile row at vec4 index `at`).
fn dot_row(x: ptr<function, array<vec4<f32>, DV>>, at: u32) -> f32 {
    var s0 = vec4<f32>();
    var s1 = vec4<f32>();
    for (var c = 0u; c < DV; c += 2u) {
        s0 = fma((*x)[c], tiles[at + c], s0);
        s1 = fma((*x)[c + 1u], tiles[at + c + 1u], s1);
    }
    let s = s0 + s1;
    return s.x + s.y + s.z + s.w;
}

// y += a · (tile row at vec4 index `at`).
fn axpy_row(y: ptr<function, array<vec4<f32>, DV>>, a: f32, at: u32) {
    for (var c = 0u; c < DV; c++) { (*y)[c] = fma(vec4(a), tiles[at + c], (*y)[c]); }
}

// Writes the first d columns of x · scale to out from element `at`.
fn store_row(x: ptr<function, array<vec4<f32>, DV>>, at: u32, scale: f32) {
    for (var c = 0u; c < DV; c++) {
        for (var i = 0u; i < 4u; i++) {
            if 4u * c + i < p.d { out[at + 4u * c + i] = (*x)[c][i] * scale; }
        }
    }
}

// The workgroup's first query: blocks in reverse, so that the longest (causal) rows start first.
fn first_query(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (nwg.x - 1u - wid.x) * WG;
}

// Element offset of the kv head that query head h of batch b reads.
fn kv_base(b: u32, h: u32) -> u32 {
    return (b * p.hkv + h / (p.hq / p.hkv)) * p.tk * p.d;
}

// Forward: workgroup (64 queries, head, batch); O and the log-sum-exp per query.
@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let t0 = first_query(wid, nwg);
    let t = t0 + lid;
    let live = t < p.tq;
    let row = (wid.z * p.hq + wid.y) * p.tq + t;
    let kv = kv_base(wid.z, wid.y);
    var qr = load_row(Q, row * p.d, live, p.scale);
    var o: array<vec4<f32>, DV>;
    var m = NEG;
    var l = 0.0;
    let my_end = select(0u, key_end(t + 1u), live);
    for (var k0 = 0u; k0 < key_end(min(p.tq, t0 + WG)); k0 += TR) {
        workgroupBarrier(); // the previous tiles are read
        stage(K, kv + k0 * p.d, min(TR, p.tk - k0), 0u, lid);
        stage(V, kv + k0 * p.d, min(TR, p.tk - k0), B_TILE, lid);
        workgroupBarrier();
        for (var j = 0u; j < min(TR, max(my_end, k0) - k0); j++) {
            let s = dot_row(&qr, j * DV);
            if s > m + SLACK {
                let a = exp(m - s);
                l *= a;
                for (var c = 0u; c < DV; c++) { o[c] *= a; }
                m = s;
            }
            let pj = exp(s - m);
            l += pj;
            axpy_row(&o, pj, B_TILE + j * DV);
        }
    }
    if live {
        store_row(&o, row * p.d, 1.0 / l);
        out[p.out2 + row] = m + log(l);
    }
}

// dQ = scale · Σ_j dS_j K_j with dS = P ∘ (dP - delta), P = exp(S - lse), dP = dO·Vᵀ: workgroup
// (64 queries, head, batch). Also writes delta = dO·O per query, for the dK/dV kernel.
@compute @workgroup_size(64)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let t0 = first_query(wid, nwg);
    let t = t0 + lid;
    let live = t < p.tq;
    let row = (wid.z * p.hq + wid.y) * p.tq + t;
    let kv = kv_base(wid.z, wid.y);
    var qr = load_row(Q, row * p.d, live, p.scale);
    var dr = load_row(DO, row * p.d, live, 1.0);
    var delta = 0.0;
    var ls = 0.0;
    if live {
        for (var c = 0u; c < DV; c++) {
            for (var i = 0u; i < 4u; i++) {
                if 4u * c + i < p.d { delta += dr[c][i] * elem(AUX, row * p.d + 4u * c + i); }
            }
        }
        out[p.out2 + row] = delta;
        ls = lse[p.lse_off + row];
    }
    var dq: array<vec4<f32>, DV>;
    let my_end = select(0u, key_end(t + 1u), live);
    for (var k0 = 0u; k0 < key_end(min(p.tq, t0 + WG)); k0 += TR) {
        workgroupBarrier();
        stage(K, kv + k0 * p.d, min(TR, p.tk - k0), 0u, lid);
        stage(V, kv + k0 * p.d, min(TR, p.tk - k0), B_TILE, lid);
        workgroupBarrier();
        for (var j = 0u; j < min(TR, max(my_end, k0) - k0); j++) {
            let pj = exp(dot_row(&qr, j * DV) - ls);
            let ds = pj * (dot_row(&dr, B_TILE + j * DV) - delta);
            axpy_row(&dq, ds, j * DV);
        }
    }
    if live { store_row(&dq, row * p.d, p.scale); }
}

// dK = scale · Σ_t dS_t Q_t and dV = Σ_t P_t dO_t over the queries of every query head of the
// GQA group: workgroup (64 keys, kv head, batch) computes dK for grid y < Hkv, else dV.
@compute @workgroup_size(64)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let is_dv = wid.y >= p.hkv;
    let kvh = wid.y % p.hkv;
    let group = p.hq / p.hkv;
    let j0 = wid.x * WG;
    let j = j0 + lid;
    let live = j < p.tk;
    let kvrow = (wid.z * p.hkv + kvh) * p.tk + j;
    var kr = load_row(K, kvrow * p.d, live, p.scale);
    var vr = load_row(V, kvrow * p.d, live && !is_dv, 1.0);
    var g: array<vec4<f32>, DV>;
    // The first query that sees key j (and key j0, for the workgroup).
    var t_first = 0u;
    var my_first = select(p.tq, 0u, live);
    if p.causal == 1u {
        t_first = max(j0, p.shift) - p.shift;
        if live { my_first = max(j, p.shift) - p.shift; }
    }
    for (var hh = 0u; hh < group; hh++) {
        let qrow0 = (wid.z * p.hq + kvh * group + hh) * p.tq;
        for (var t0 = t_first; t0 < p.tq; t0 += TR) {
            let rows = min(TR, p.tq - t0);
            workgroupBarrier();
            stage(Q, (qrow0 + t0) * p.d, rows, 0u, lid);
            stage(DO, (qrow0 + t0) * p.d, rows, B_TILE, lid);
            for (var i = lid; i < rows; i += WG) {
                tile_lse[i] = lse[p.lse_off + qrow0 + t0 + i];
                tile_delta[i] = aux[p.aux_off + qrow0 + t0 + i];
            }
            workgroupBarrier();
            for (var i = min(rows, max(my_first, t0) - t0); i < rows; i++) {
                let pt = exp(dot_row(&kr, i * DV) - tile_lse[i]);
                if is_dv {
                    axpy_row(&g, pt, B_TILE + i * DV);
                } else {
                    let ds = pt * (dot_row(&vr, B_TILE + i * DV) - tile_delta[i]);
                    axpy_row(&g, ds, i * DV);
                }
            }
        }
    }
    if live {
        if is_dv {
            store_row(&g, p.out2 + kvrow * p.d, 1.0);
        } else {
            store_row(&g, kvrow * p.d, p.scale);
        }
    }
}
