// FlashAttention: the forward (online softmax) and two backward kernels, dQ (looping over key
// blocks) and dK/dV (looping over query blocks and the query heads of a GQA group), so no
// gradient is written by two workgroups. 128 threads each; tiles of up to D = 128 columns,
// rows padded to DS floats so threads reading different rows hit different banks.
// Workgroup storage: ≤ 25.8 KiB per entry (lavapipe allows 32 KiB).
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
    delta_off: u32,
    out2: u32,      // where the second output starts in out (LSE after O, dV after dK)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;     // [B, Hq, Tq, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;     // [B, Hkv, Tk, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;     // [B, Hkv, Tk, D]
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // O+LSE, dQ, or dK+dV
@group(0) @binding(5) var<storage, read> dout: array<f32>;  // [B, Hq, Tq, D] (backward)
@group(0) @binding(6) var<storage, read> lse: array<f32>;   // [B, Hq, Tq]
@group(0) @binding(7) var<storage, read> delta: array<f32>; // [B, Hq, Tq], rowsum(dO ∘ O)

const DS: u32 = 129u;   // row stride of the shared tiles (head dims up to 128)
const NEG: f32 = -1.0e30;

// 16-row tiles, 8-row tiles, and score tiles; each entry says what it keeps where.
var<workgroup> tile16a: array<f32, 2064>;
var<workgroup> tile16b: array<f32, 2064>;
var<workgroup> tile16c: array<f32, 2064>;
var<workgroup> tile8a: array<f32, 1032>;
var<workgroup> tile8b: array<f32, 1032>;
var<workgroup> sc_a: array<f32, 256>;
var<workgroup> sc_b: array<f32, 128>;
var<workgroup> rowst: array<f32, 16>;

fn kept(t: u32, j: u32) -> bool {
    return j < p.tk && (p.causal == 0u || j <= t + p.shift);
}

// Keys that queries before t_end can see.
fn key_end(t_end: u32) -> u32 {
    if p.causal == 1u { return min(p.tk, t_end + p.shift); }
    return p.tk;
}

// Forward: workgroup (query block of 16, head, batch). Thread (r, c) = (lid / 8, lid % 8) owns
// query row r: scores for keys c and c + 8 of each tile, and output columns c, c + 8, ...
// tile16a = Q · scale, tile16b = K tile, tile16c = V tile, sc_a = scores [16][16].
@compute @workgroup_size(128)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q0 = wid.x * 16u;
    let h = wid.y;
    let b = wid.z;
    let kvh = h / (p.hq / p.hkv);
    let row0 = (b * p.hq + h) * p.tq + q0; // global query row of tile row 0
    let kbase = (b * p.hkv + kvh) * p.tk * p.d;
    let r = lid / 8u;
    let c = lid % 8u;
    let t = q0 + r;
    for (var e = lid; e < 16u * p.d; e += 128u) {
        let i = e / p.d;
        let col = e % p.d;
        var x = 0.0;
        if q0 + i < p.tq { x = q[p.q_off + (row0 + i) * p.d + col]; }
        tile16a[i * DS + col] = x * p.scale;
    }
    var acc: array<f32, 16>;
    var m = NEG;
    var l = 0.0;
    let kend = key_end(min(q0 + 16u, p.tq));
    for (var k0 = 0u; k0 < kend; k0 += 16u) {
        workgroupBarrier(); // the previous tile is no longer read
        for (var e = lid; e < 16u * p.d; e += 128u) {
            let j = e / p.d;
            let col = e % p.d;
            var kx = 0.0;
            var vx = 0.0;
            if k0 + j < p.tk {
                kx = k[p.k_off + kbase + (k0 + j) * p.d + col];
                vx = v[p.v_off + kbase + (k0 + j) * p.d + col];
            }
            tile16b[j * DS + col] = kx;
            tile16c[j * DS + col] = vx;
        }
        workgroupBarrier();
        for (var jj = 0u; jj < 2u; jj++) {
            let j = c + 8u * jj;
            var s = 0.0;
            for (var dd = 0u; dd < p.d; dd++) { s += tile16a[r * DS + dd] * tile16b[j * DS + dd]; }
            sc_a[r * 16u + j] = s;
        }
        workgroupBarrier();
        // Online softmax: the 8 threads of a row do the same arithmetic, so agree on m and l.
        var mt = NEG;
        for (var j = 0u; j < 16u; j++) {
            if kept(t, k0 + j) { mt = max(mt, sc_a[r * 16u + j]); }
        }
        let m_new = max(m, mt);
        let alpha = exp(m - m_new);
        l *= alpha;
        for (var kk = 0u; kk < 16u; kk++) { acc[kk] *= alpha; }
        for (var j = 0u; j < 16u; j++) {
            if kept(t, k0 + j) {
                let pj = exp(sc_a[r * 16u + j] - m_new);
                l += pj;
                for (var kk = 0u; kk < 16u; kk++) {
                    let col = c + 8u * kk;
                    if col < p.d { acc[kk] += pj * tile16c[j * DS + col]; }
                }
            }
        }
        m = m_new;
    }
    if t < p.tq {
        let row = row0 + r;
        for (var kk = 0u; kk < 16u; kk++) {
            let col = c + 8u * kk;
            if col < p.d { out[row * p.d + col] = acc[kk] / l; }
        }
        if c == 0u { out[p.out2 + row] = m + log(l); }
    }
}

// dQ: workgroup (query block of 16, head, batch), key tiles of 8. Thread (r, c) = (lid / 8,
// lid % 8) computes P and dS for query r and key c of each tile, and owns dQ columns c, c + 8, ...
// tile16a = Q, tile16b = dO, tile8a = K tile, tile8b = V tile, sc_b = dS [16][8].
@compute @workgroup_size(128)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q0 = wid.x * 16u;
    let h = wid.y;
    let b = wid.z;
    let kvh = h / (p.hq / p.hkv);
    let row0 = (b * p.hq + h) * p.tq + q0;
    let kbase = (b * p.hkv + kvh) * p.tk * p.d;
    let r = lid / 8u;
    let c = lid % 8u;
    let t = q0 + r;
    for (var e = lid; e < 16u * p.d; e += 128u) {
        let i = e / p.d;
        let col = e % p.d;
        var x = 0.0;
        var g = 0.0;
        if q0 + i < p.tq {
            x = q[p.q_off + (row0 + i) * p.d + col];
            g = dout[p.do_off + (row0 + i) * p.d + col];
        }
        tile16a[i * DS + col] = x;
        tile16b[i * DS + col] = g;
    }
    var lse_t = 0.0;
    var delta_t = 0.0;
    if t < p.tq {
        lse_t = lse[p.lse_off + row0 + r];
        delta_t = delta[p.delta_off + row0 + r];
    }
    var acc: array<f32, 16>;
    let kend = key_end(min(q0 + 16u, p.tq));
    for (var k0 = 0u; k0 < kend; k0 += 8u) {
        workgroupBarrier();
        for (var e = lid; e < 8u * p.d; e += 128u) {
            let j = e / p.d;
            let col = e % p.d;
            var kx = 0.0;
            var vx = 0.0;
            if k0 + j < p.tk {
                kx = k[p.k_off + kbase + (k0 + j) * p.d + col];
                vx = v[p.v_off + kbase + (k0 + j) * p.d + col];
            }
            tile8a[j * DS + col] = kx;
            tile8b[j * DS + col] = vx;
        }
        workgroupBarrier();
        var ds = 0.0;
        if t < p.tq && kept(t, k0 + c) {
            var s = 0.0;
            var dp = 0.0;
            for (var dd = 0u; dd < p.d; dd++) {
                s += tile16a[r * DS + dd] * tile8a[c * DS + dd];
                dp += tile16b[r * DS + dd] * tile8b[c * DS + dd];
            }
            ds = exp(s * p.scale - lse_t) * (dp - delta_t);
        }
        sc_b[r * 8u + c] = ds;
        workgroupBarrier();
        for (var j = 0u; j < 8u; j++) {
            let dsj = sc_b[r * 8u + j];
            for (var kk = 0u; kk < 16u; kk++) {
                let col = c + 8u * kk;
                if col < p.d { acc[kk] += dsj * tile8a[j * DS + col]; }
            }
        }
    }
    if t < p.tq {
        for (var kk = 0u; kk < 16u; kk++) {
            let col = c + 8u * kk;
            if col < p.d { out[(row0 + r) * p.d + col] = acc[kk] * p.scale; }
        }
    }
}

// dK, dV: workgroup (key block of 16, kv head, batch), looping over the group's query heads and
// their query tiles of 8. Thread (i, j) = (lid / 16, lid % 16) computes P and dS for query i,
// key j; thread (jr, c) = (lid / 8, lid % 8) owns dK and dV of key jr, columns c, c + 8, ...
// tile16a = K, tile16b = V, tile8a = Q tile, tile8b = dO tile, sc_a = P, sc_b = dS [8][16],
// rowst = LSE and delta of the tile's queries.
@compute @workgroup_size(128)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k0 = wid.x * 16u;
    let kvh = wid.y;
    let b = wid.z;
    let group = p.hq / p.hkv;
    let kbase = (b * p.hkv + kvh) * p.tk * p.d;
    for (var e = lid; e < 16u * p.d; e += 128u) {
        let j = e / p.d;
        let col = e % p.d;
        var kx = 0.0;
        var vx = 0.0;
        if k0 + j < p.tk {
            kx = k[p.k_off + kbase + (k0 + j) * p.d + col];
            vx = v[p.v_off + kbase + (k0 + j) * p.d + col];
        }
        tile16a[j * DS + col] = kx;
        tile16b[j * DS + col] = vx;
    }
    let si = lid / 16u;
    let sj = lid % 16u;
    let jr = lid / 8u;
    let c = lid % 8u;
    var dk: array<f32, 16>;
    var dv: array<f32, 16>;
    // The first query that sees key k0.
    var t_start = 0u;
    if p.causal == 1u && k0 > p.shift { t_start = k0 - p.shift; }
    for (var hh = 0u; hh < group; hh++) {
        let row0 = (b * p.hq + kvh * group + hh) * p.tq; // global row of query 0 of this head
        for (var q0 = t_start; q0 < p.tq; q0 += 8u) {
            workgroupBarrier();
            for (var e = lid; e < 8u * p.d; e += 128u) {
                let i = e / p.d;
                let col = e % p.d;
                var x = 0.0;
                var g = 0.0;
                if q0 + i < p.tq {
                    x = q[p.q_off + (row0 + q0 + i) * p.d + col];
                    g = dout[p.do_off + (row0 + q0 + i) * p.d + col];
                }
                tile8a[i * DS + col] = x;
                tile8b[i * DS + col] = g;
            }
            if lid < 8u {
                var ls = 0.0;
                var dl = 0.0;
                if q0 + lid < p.tq {
                    ls = lse[p.lse_off + row0 + q0 + lid];
                    dl = delta[p.delta_off + row0 + q0 + lid];
                }
                rowst[lid] = ls;
                rowst[8u + lid] = dl;
            }
            workgroupBarrier();
            let t = q0 + si;
            var pr = 0.0;
            var ds = 0.0;
            if t < p.tq && kept(t, k0 + sj) {
                var s = 0.0;
                var dp = 0.0;
                for (var dd = 0u; dd < p.d; dd++) {
                    s += tile8a[si * DS + dd] * tile16a[sj * DS + dd];
                    dp += tile8b[si * DS + dd] * tile16b[sj * DS + dd];
                }
                pr = exp(s * p.scale - rowst[si]);
                ds = pr * (dp - rowst[8u + si]);
            }
            sc_a[si * 16u + sj] = pr;
            sc_b[si * 16u + sj] = ds;
            workgroupBarrier();
            for (var i = 0u; i < 8u; i++) {
                let pij = sc_a[i * 16u + jr];
                let dsij = sc_b[i * 16u + jr];
                for (var kk = 0u; kk < 16u; kk++) {
                    let col = c + 8u * kk;
                    if col < p.d {
                        dv[kk] += pij * tile8b[i * DS + col];
                        dk[kk] += dsij * tile8a[i * DS + col];
                    }
                }
            }
        }
    }
    if k0 + jr < p.tk {
        let at = kbase + (k0 + jr) * p.d;
        for (var kk = 0u; kk < 16u; kk++) {
            let col = c + 8u * kk;
            if col < p.d {
                out[at + col] = dk[kk] * p.scale;
                out[p.out2 + at + col] = dv[kk];
            }
        }
    }
}
