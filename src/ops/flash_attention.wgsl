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

// Forward: workgroup (block of 64 queries, head · column half, batch), key tiles of 32, 128
// threads. Thread (ty, tx) = (lid / 8, lid % 8) owns query rows 4·ty .. +3: their scores for keys
// 4·tx .. +3 of each tile, and output columns 4·tx .. +3 and 32 + 4·tx .. +3 of its column half
// (64 columns; a head dim over 64 runs two halves, each recomputing the scores).
// S = Q·Kᵀ is accumulated over chunks of 32 head dims staged d-major in fbuf (Q then K); the P
// tile goes to fp (key-major, vec4 of 4 rows) and the V tile reuses fbuf.
var<workgroup> fbuf: array<vec4<f32>, 768>;
var<workgroup> fp: array<vec4<f32>, 512>;
var<workgroup> fred: array<f32, 512>; // per-thread row partials [8 tx][64 rows]

// The maximum (or sum) over the 8 threads of each of this thread's 4 rows.
fn row_reduce(x: vec4<f32>, ty: u32, tx: u32, is_max: bool) -> vec4<f32> {
    workgroupBarrier(); // fred's previous contents are read
    for (var r = 0u; r < 4u; r++) { fred[tx * 64u + 4u * ty + r] = x[r]; }
    workgroupBarrier();
    var y = x;
    for (var r = 0u; r < 4u; r++) {
        for (var o = 0u; o < 8u; o++) {
            let z = fred[o * 64u + 4u * ty + r];
            if o != tx { y[r] = select(y[r] + z, max(y[r], z), is_max); }
        }
    }
    return y;
}

@compute @workgroup_size(128)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let halves = (p.d + 63u) / 64u;
    let q0 = wid.x * 64u;
    let h = wid.y / halves;
    let c0 = (wid.y % halves) * 64u; // first output column of this workgroup
    let b = wid.z;
    let kvh = h / (p.hq / p.hkv);
    let row0 = (b * p.hq + h) * p.tq + q0; // global query row of tile row 0
    let kbase = (b * p.hkv + kvh) * p.tk * p.d;
    let ty = lid / 8u;
    let tx = lid % 8u;
    var m = vec4<f32>(NEG);
    var l = vec4<f32>(); // this thread's share of the row sums
    var o0 = mat2x4<f32>(); // row 4·ty + r: columns c0 + 4·tx .. +3 and c0 + 32 + 4·tx .. +3
    var o1 = mat2x4<f32>();
    var o2 = mat2x4<f32>();
    var o3 = mat2x4<f32>();
    let kend = key_end(min(q0 + 64u, p.tq));
    for (var k0 = 0u; k0 < kend; k0 += 32u) {
        // s_r: scores of row 4·ty + r for keys k0 + 4·tx .. +3.
        var s0 = vec4<f32>();
        var s1 = vec4<f32>();
        var s2 = vec4<f32>();
        var s3 = vec4<f32>();
        for (var d0 = 0u; d0 < p.d; d0 += 32u) {
            workgroupBarrier(); // fbuf is no longer read
            for (var e = lid; e < 2048u; e += 128u) {
                let i = e / 32u;
                let dd = e % 32u;
                var x = 0.0;
                if q0 + i < p.tq && d0 + dd < p.d { x = q[p.q_off + (row0 + i) * p.d + d0 + dd]; }
                fbuf[dd * 16u + i / 4u][i % 4u] = x * p.scale;
            }
            for (var e = lid; e < 1024u; e += 128u) {
                let j = e / 32u;
                let dd = e % 32u;
                var x = 0.0;
                if k0 + j < p.tk && d0 + dd < p.d { x = k[p.k_off + kbase + (k0 + j) * p.d + d0 + dd]; }
                fbuf[512u + dd * 8u + j / 4u][j % 4u] = x;
            }
            workgroupBarrier();
            for (var dd = 0u; dd < 32u; dd++) {
                let qv = fbuf[dd * 16u + ty];
                let kv = fbuf[512u + dd * 8u + tx];
                s0 += qv.x * kv;
                s1 += qv.y * kv;
                s2 += qv.z * kv;
                s3 += qv.w * kv;
            }
        }
        // Mask, then the online softmax: every thread of a row gets the same new maximum.
        var s = mat4x4<f32>(s0, s1, s2, s3);
        var mt = vec4<f32>(NEG);
        for (var r = 0u; r < 4u; r++) {
            for (var jj = 0u; jj < 4u; jj++) {
                if !kept(q0 + 4u * ty + r, k0 + 4u * tx + jj) { s[r][jj] = NEG; }
                mt[r] = max(mt[r], s[r][jj]);
            }
        }
        let m_new = max(m, row_reduce(mt, ty, tx, true));
        let alpha = exp(m - m_new);
        m = m_new;
        var pt = mat4x4<f32>(); // pt[jj]: P of key 4·tx + jj for the 4 rows
        for (var r = 0u; r < 4u; r++) {
            for (var jj = 0u; jj < 4u; jj++) {
                pt[jj][r] = select(exp(s[r][jj] - m_new[r]), 0.0, s[r][jj] == NEG);
            }
        }
        l = l * alpha + pt[0] + pt[1] + pt[2] + pt[3];
        o0 *= alpha.x;
        o1 *= alpha.y;
        o2 *= alpha.z;
        o3 *= alpha.w;
        workgroupBarrier(); // everyone is done with the Q and K chunks
        for (var jj = 0u; jj < 4u; jj++) { fp[(4u * tx + jj) * 16u + ty] = pt[jj]; }
        for (var e = lid; e < 2048u; e += 128u) {
            let j = e / 64u;
            let col = c0 + e % 64u;
            var x = 0.0;
            if k0 + j < p.tk && col < p.d { x = v[p.v_off + kbase + (k0 + j) * p.d + col]; }
            fbuf[j * 16u + (e % 64u) / 4u][e % 4u] = x;
        }
        workgroupBarrier();
        for (var j = 0u; j < 32u; j++) {
            let pv = fp[j * 16u + ty];
            let vj = mat2x4<f32>(fbuf[j * 16u + tx], fbuf[j * 16u + tx + 8u]);
            o0 += vj * pv.x;
            o1 += vj * pv.y;
            o2 += vj * pv.z;
            o3 += vj * pv.w;
        }
    }
    l = row_reduce(l, ty, tx, false);
    let o = array<mat2x4<f32>, 4>(o0, o1, o2, o3);
    for (var r = 0u; r < 4u; r++) {
        let t = q0 + 4u * ty + r;
        if t < p.tq {
            let row = row0 + 4u * ty + r;
            for (var half = 0u; half < 2u; half++) {
                for (var i = 0u; i < 4u; i++) {
                    let col = c0 + 32u * half + 4u * tx + i;
                    if col < p.d { out[row * p.d + col] = o[r][half][i] / l[r]; }
                }
            }
            if tx == 0u && c0 == 0u { out[p.out2 + row] = m[r] + log(l[r]); }
        }
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
