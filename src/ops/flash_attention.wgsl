// FlashAttention: the forward (online softmax) and two backward kernels, dQ (looping over key
// tiles) and dK/dV (looping over query tiles and the query heads of a GQA group), so no gradient
// is written by two workgroups. 128 threads each, as a 16 × 8 grid: thread (ty, tx) = (lid / 8,
// lid % 8). A workgroup owns 64 rows (queries, or keys for dK/dV) and walks tiles of 32 columns
// (keys, or queries). Every product is one of two register-blocked shapes:
// - `xyt`: the 64 × 32 block X·Yᵀ over the head dim (scores S = Q·Kᵀ, dP = dO·Vᵀ, and their
//   transposes for dK/dV), thread (ty, tx) holding rows 4·ty .. +3 × columns 4·tx .. +3;
// - `acc_pv`: 64 × 64 output columns += A·B with A a 64 × 32 tile kept in shared memory
//   (P, dS, or their transposes) and B 32 rows of a global matrix (V, K, dO or Q), thread (ty, tx)
//   holding rows 4·ty .. +3 × columns 4·tx .. +3 and 32 + 4·tx .. +3.
// Head dims over 64 run as two column halves (grid y = head · halves + half), each recomputing
// the scores. Workgroup storage: 30 KiB (lavapipe allows 32 KiB).
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

const NEG: f32 = -1.0e30;
const Q: u32 = 0u; // which input `elem` reads
const K: u32 = 1u;
const V: u32 = 2u;
const DO: u32 = 3u;

// Staging for xyt (X d-major at 0, Y d-major at 512) or acc_pv's B tile (row-major at 0).
var<workgroup> fbuf: array<vec4<f32>, 768>;
// Up to two A tiles for acc_pv, column-major: vec4 (c·16 + r/4) holds rows r..r+3 of column c.
var<workgroup> fp: array<vec4<f32>, 1024>;
// Per-thread row partials [8 tx][64 rows], for the forward's row maxima and sums.
var<workgroup> fred: array<f32, 512>;

fn kept(t: u32, j: u32) -> bool {
    return j < p.tk && (p.causal == 0u || j <= t + p.shift);
}

// Keys that queries before t_end can see.
fn key_end(t_end: u32) -> u32 {
    if p.causal == 1u { return min(p.tk, t_end + p.shift); }
    return p.tk;
}

fn elem(which: u32, at: u32) -> f32 {
    switch which {
        case 0u: { return q[p.q_off + at]; }
        case 1u: { return k[p.k_off + at]; }
        case 2u: { return v[p.v_off + at]; }
        default: { return dout[p.do_off + at]; }
    }
}

// Block (rows 4·ty .. +3) × (columns 4·tx .. +3) of X·Yᵀ: X is 64 rows of input `xw` from
// element x_at (x_rows of them inside), Y 32 rows of `yw` from y_at (y_rows inside); column
// r of the result holds row 4·ty + r. Outside rows read as zero.
fn xyt(xw: u32, x_at: u32, x_rows: u32, yw: u32, y_at: u32, y_rows: u32, lid: u32, ty: u32, tx: u32) -> mat4x4<f32> {
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
            if i < x_rows && d0 + dd < p.d { x = elem(xw, x_at + i * p.d + d0 + dd); }
            fbuf[dd * 16u + i / 4u][i % 4u] = x;
        }
        for (var e = lid; e < 1024u; e += 128u) {
            let j = e / 32u;
            let dd = e % 32u;
            var y = 0.0;
            if j < y_rows && d0 + dd < p.d { y = elem(yw, y_at + j * p.d + d0 + dd); }
            fbuf[512u + dd * 8u + j / 4u][j % 4u] = y;
        }
        workgroupBarrier();
        for (var dd = 0u; dd < 32u; dd++) {
            let xv = fbuf[dd * 16u + ty];
            let yv = fbuf[512u + dd * 8u + tx];
            s0 += xv.x * yv;
            s1 += xv.y * yv;
            s2 += xv.z * yv;
            s3 += xv.w * yv;
        }
    }
    return mat4x4<f32>(s0, s1, s2, s3);
}

// Puts this thread's 4 × 4 block (column r = row 4·ty + r) into A tile `tile` of fp.
fn put_a(tile: u32, s: mat4x4<f32>, ty: u32, tx: u32) {
    let st = transpose(s);
    for (var jj = 0u; jj < 4u; jj++) { fp[tile * 512u + (4u * tx + jj) * 16u + ty] = st[jj]; }
}

// o += A·B for this thread's rows and columns (see the top), A = tile `tile` of fp, B = 32 rows of
// input `bw` from element b_at (b_rows inside), columns c0 .. c0 + 63.
fn acc_pv(o: array<mat2x4<f32>, 4>, tile: u32, bw: u32, b_at: u32, b_rows: u32, c0: u32, lid: u32, ty: u32,
          tx: u32) -> array<mat2x4<f32>, 4> {
    workgroupBarrier(); // fbuf is no longer read; fp is written
    for (var e = lid; e < 2048u; e += 128u) {
        let j = e / 64u;
        let col = c0 + e % 64u;
        var x = 0.0;
        if j < b_rows && col < p.d { x = elem(bw, b_at + j * p.d + col); }
        fbuf[e / 4u][e % 4u] = x;
    }
    workgroupBarrier();
    var o0 = o[0];
    var o1 = o[1];
    var o2 = o[2];
    var o3 = o[3];
    for (var j = 0u; j < 32u; j++) {
        let a = fp[tile * 512u + j * 16u + ty];
        let bj = mat2x4<f32>(fbuf[j * 16u + tx], fbuf[j * 16u + tx + 8u]);
        o0 += bj * a.x;
        o1 += bj * a.y;
        o2 += bj * a.z;
        o3 += bj * a.w;
    }
    return array<mat2x4<f32>, 4>(o0, o1, o2, o3);
}

// Writes this thread's rows × columns of o (times `scale`) to out from element `at` (row 0 of the
// workgroup), rows below `rows`.
fn store_o(o: array<mat2x4<f32>, 4>, at: u32, rows: u32, c0: u32, scale: vec4<f32>, ty: u32, tx: u32) {
    for (var r = 0u; r < 4u; r++) {
        if 4u * ty + r < rows {
            for (var half = 0u; half < 2u; half++) {
                for (var i = 0u; i < 4u; i++) {
                    let col = c0 + 32u * half + 4u * tx + i;
                    if col < p.d { out[at + (4u * ty + r) * p.d + col] = o[r][half][i] * scale[r]; }
                }
            }
        }
    }
}

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

// Forward: workgroup (64 queries, head · half, batch); O and the log-sum-exp per query.
@compute @workgroup_size(128)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let halves = (p.d + 63u) / 64u;
    let q0 = wid.x * 64u;
    let h = wid.y / halves;
    let c0 = (wid.y % halves) * 64u;
    let bh = wid.z * p.hq + h;
    let kvbase = (wid.z * p.hkv + h / (p.hq / p.hkv)) * p.tk * p.d;
    let ty = lid / 8u;
    let tx = lid % 8u;
    let q_rows = min(64u, p.tq - q0);
    var m = vec4<f32>(NEG);
    var l = vec4<f32>(); // this thread's share of the row sums
    var o = array<mat2x4<f32>, 4>();
    let kend = key_end(q0 + q_rows);
    for (var k0 = 0u; k0 < kend; k0 += 32u) {
        let k_rows = min(32u, p.tk - k0);
        var s = xyt(Q, (bh * p.tq + q0) * p.d, q_rows, K, kvbase + k0 * p.d, k_rows, lid, ty, tx) * p.scale;
        // Mask, then the online softmax: every thread of a row gets the same new maximum.
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
        for (var r = 0u; r < 4u; r++) {
            for (var jj = 0u; jj < 4u; jj++) {
                s[r][jj] = select(exp(s[r][jj] - m_new[r]), 0.0, s[r][jj] == NEG);
            }
            l[r] = l[r] * alpha[r] + s[r][0] + s[r][1] + s[r][2] + s[r][3];
            o[r] *= alpha[r];
        }
        put_a(0u, s, ty, tx);
        o = acc_pv(o, 0u, V, kvbase + k0 * p.d, k_rows, c0, lid, ty, tx);
    }
    l = row_reduce(l, ty, tx, false);
    let row0 = bh * p.tq + q0;
    store_o(o, row0 * p.d, q_rows, c0, 1.0 / l, ty, tx);
    for (var r = 0u; r < 4u; r++) {
        if tx == 0u && c0 == 0u && 4u * ty + r < q_rows { out[p.out2 + row0 + 4u * ty + r] = m[r] + log(l[r]); }
    }
}

// P and dS of a 4 × 4 block from its scores s and dP (already scaled), for queries t(r, jj) with
// log-sum-exp lse_(r, jj) and delta de_(r, jj); masked entries are zero.
fn grads_block(s: mat4x4<f32>, dp: mat4x4<f32>, lse_b: mat4x4<f32>, de_b: mat4x4<f32>, keep: mat4x4<f32>) -> array<mat4x4<f32>, 2> {
    var pm = mat4x4<f32>();
    var ds = mat4x4<f32>();
    for (var r = 0u; r < 4u; r++) {
        for (var jj = 0u; jj < 4u; jj++) {
            if keep[r][jj] != 0.0 {
                pm[r][jj] = exp(s[r][jj] - lse_b[r][jj]);
                ds[r][jj] = pm[r][jj] * (dp[r][jj] - de_b[r][jj]);
            }
        }
    }
    return array<mat4x4<f32>, 2>(pm, ds);
}

// dQ: workgroup (64 queries, head · half, batch), key tiles of 32: dQ = scale · dS·K.
@compute @workgroup_size(128)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let halves = (p.d + 63u) / 64u;
    let q0 = wid.x * 64u;
    let h = wid.y / halves;
    let c0 = (wid.y % halves) * 64u;
    let bh = wid.z * p.hq + h;
    let kvbase = (wid.z * p.hkv + h / (p.hq / p.hkv)) * p.tk * p.d;
    let ty = lid / 8u;
    let tx = lid % 8u;
    let q_rows = min(64u, p.tq - q0);
    let row0 = bh * p.tq + q0;
    var lse_r = vec4<f32>();
    var de_r = vec4<f32>();
    for (var r = 0u; r < 4u; r++) {
        if 4u * ty + r < q_rows {
            lse_r[r] = lse[p.lse_off + row0 + 4u * ty + r];
            de_r[r] = delta[p.delta_off + row0 + 4u * ty + r];
        }
    }
    let lse_b = mat4x4<f32>(vec4(lse_r.x), vec4(lse_r.y), vec4(lse_r.z), vec4(lse_r.w));
    let de_b = mat4x4<f32>(vec4(de_r.x), vec4(de_r.y), vec4(de_r.z), vec4(de_r.w));
    var o = array<mat2x4<f32>, 4>();
    let kend = key_end(q0 + q_rows);
    for (var k0 = 0u; k0 < kend; k0 += 32u) {
        let k_rows = min(32u, p.tk - k0);
        let s = xyt(Q, row0 * p.d, q_rows, K, kvbase + k0 * p.d, k_rows, lid, ty, tx) * p.scale;
        let dp = xyt(DO, row0 * p.d, q_rows, V, kvbase + k0 * p.d, k_rows, lid, ty, tx);
        var keep = mat4x4<f32>();
        for (var r = 0u; r < 4u; r++) {
            for (var jj = 0u; jj < 4u; jj++) {
                keep[r][jj] = select(0.0, 1.0, kept(q0 + 4u * ty + r, k0 + 4u * tx + jj));
            }
        }
        let g = grads_block(s, dp, lse_b, de_b, keep);
        put_a(0u, g[1], ty, tx);
        o = acc_pv(o, 0u, K, kvbase + k0 * p.d, k_rows, c0, lid, ty, tx);
    }
    store_o(o, row0 * p.d, q_rows, c0, vec4<f32>(p.scale), ty, tx);
}

// dK and dV: workgroup (64 keys, kv head · half, batch), query tiles of 32 of every query head of
// the GQA group: dV = Pᵀ·dO, dK = scale · dSᵀ·Q, with Pᵀ and dSᵀ from Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ.
@compute @workgroup_size(128)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let halves = (p.d + 63u) / 64u;
    let j0 = wid.x * 64u;
    let kvh = wid.y / halves;
    let c0 = (wid.y % halves) * 64u;
    let group = p.hq / p.hkv;
    let kvrow0 = (wid.z * p.hkv + kvh) * p.tk + j0;
    let ty = lid / 8u;
    let tx = lid % 8u;
    let k_rows = min(64u, p.tk - j0);
    // The first query that sees key j0, rounded down to a tile.
    var t_begin = 0u;
    if p.causal == 1u { t_begin = (max(j0, p.shift) - p.shift) / 32u * 32u; }
    var dk = array<mat2x4<f32>, 4>();
    var dv = array<mat2x4<f32>, 4>();
    for (var hh = 0u; hh < group; hh++) {
        let qrow0 = (wid.z * p.hq + kvh * group + hh) * p.tq;
        for (var t0 = t_begin; t0 < p.tq; t0 += 32u) {
            let q_rows = min(32u, p.tq - t0);
            let q_at = (qrow0 + t0) * p.d;
            let st = xyt(K, kvrow0 * p.d, k_rows, Q, q_at, q_rows, lid, ty, tx) * p.scale;
            let dpt = xyt(V, kvrow0 * p.d, k_rows, DO, q_at, q_rows, lid, ty, tx);
            var lse_b = mat4x4<f32>();
            var de_b = mat4x4<f32>();
            var keep = mat4x4<f32>();
            for (var jj = 0u; jj < 4u; jj++) {
                let t = t0 + 4u * tx + jj;
                var lt = 0.0;
                var dt = 0.0;
                if t < p.tq {
                    lt = lse[p.lse_off + qrow0 + t];
                    dt = delta[p.delta_off + qrow0 + t];
                }
                for (var r = 0u; r < 4u; r++) {
                    lse_b[r][jj] = lt;
                    de_b[r][jj] = dt;
                    keep[r][jj] = select(0.0, 1.0, t < p.tq && kept(t, j0 + 4u * ty + r));
                }
            }
            let g = grads_block(st, dpt, lse_b, de_b, keep);
            put_a(0u, g[0], ty, tx);
            put_a(1u, g[1], ty, tx);
            dv = acc_pv(dv, 0u, DO, q_at, q_rows, c0, lid, ty, tx);
            dk = acc_pv(dk, 1u, Q, q_at, q_rows, c0, lid, ty, tx);
        }
    }
    store_o(dk, kvrow0 * p.d, k_rows, c0, vec4<f32>(p.scale), ty, tx);
    store_o(dv, p.out2 + kvrow0 * p.d, k_rows, c0, vec4<f32>(1.0), ty, tx);
}
