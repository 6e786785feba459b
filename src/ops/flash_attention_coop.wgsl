// FlashAttention on cooperative matrices (tensor cores), for MatmulPrecision::F16: the same three
// entry points, parameters and bindings as flash_attention.wgsl, for head dims up to DH (64 or 128,
// zero padded) with 4-aligned rows. Q, K, V, dO and the probabilities go through f16; scores, sums
// and outputs stay f32.
// A workgroup of 4 subgroups of 32 owns 64 rows (queries; keys in dK/dV), 16 per subgroup, held as
// NB = DH / 16 matrices of 16×16 f16 (x0, x1, …: a line with `$j` is repeated for j = 0 .. NB - 1,
// `$list(x)` and `$params(x, T)` spell them out; see kernel.rs `unroll`). The other side comes in tiles of 32 rows staged in shared memory as f16.
// Each subgroup stores its 16×32 tile of scores to shared memory, where each lane takes 16 of them
// as four vec4s (row lane % 16, half lane / 16), makes probabilities (or score gradients) and
// writes them back as f16 for the next product. The forward walks the keys twice, first for each
// row's log-sum-exp, then for O with the final probabilities: no rescaling of O, which a
// cooperative matrix cannot do row by row. The backward passes P and then dP through the same
// tile of S, one barrier more, to keep to 22 KiB of workgroup storage at DH 64 (30 KiB at 128,
// checked on the host): on the H200 a workgroup of more than 24 KiB ran the forward 40% slower
// and the matmul at half speed. Needs subgroups of 32. The host prepends the `enable`s, DH, NB,
// the type FV that fetched rows wait in (f32, or f16 at DH 128 to save registers) and
// flash_attention_common.wgsl.

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> aux: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> lse: array<f32>;

const LD: u32 = DH + 8u; // f16 row stride of staged rows (16-byte aligned, off the bank period)
const FS: u32 = 32u / NB; // rows apart of a thread's fetched vec4s
const BC: u32 = 32u;  // rows of the other side per tile
const SS: u32 = 512u; // f32s of a subgroup's tile of scores (16 × 32)
const LP: u32 = 40u;  // f16 row stride of a subgroup's probabilities
const PS: u32 = 640u; // f16s of them (16 × LP)

alias A16 = coop_mat16x16<f16, A>;
alias B16 = coop_mat16x16<f16, B>;
alias C32 = coop_mat16x16<f32, C>;

// Staged rows (as vec4s of f16; coopLoad counts in vec4s): 64 of the workgroup's own at the start,
// then two tiles of 32 at rows 0 and 32.
var<workgroup> T: array<vec4<f16>, 16u * LD>;
// Per subgroup at f32 sg·SS: a tile of scores (row stride 32), then of dP in the backward. Tiles
// are vec4s, so that a lane reads and writes four elements at once (cooperative loads and stores
// count in vec4s too).
var<workgroup> S: array<vec4<f32>, 512>;
// Per subgroup at f16 sg·PS: probabilities or score gradients (dK/dV: P, then dS).
var<workgroup> P1: array<vec4<f16>, 640>;
// dK/dV: the query tile's log-sum-exp (vec4s 0 .. 8) and delta (8 .. 16).
var<workgroup> R: array<vec4<f32>, 16>;

// Columns 4·c4 .. +3 of row r of input `which` (row r at element at + r·rs past the input's
// offset; zeros past `rows` and d).
fn ld4(which: u32, at: u32, rs: u32, rows: u32, r: u32, c4: u32) -> vec4<f32> {
    if r >= rows || 4u * c4 >= p.d {
        return vec4(0.0);
    }
    let e = at + r * rs + 4u * c4;
    switch which {
        case 0u: { return q[(p.q_off + e) / 4u]; }
        case 1u: { return k[(p.k_off + e) / 4u]; }
        case 2u: { return v[(p.v_off + e) / 4u]; }
        case 3u: { return dout[(p.do_off + e) / 4u]; }
        default: { return aux[(p.aux_off + e) / 4u]; }
    }
}

// 32 rows on their way to T: thread li holds columns 4·(li % (DH / 4)) .. +3 of rows
// li / (DH / 4) + FS·j.
struct Fetch {
    x$j: FV,
}

fn fetch(which: u32, at: u32, rs: u32, rows: u32, li: u32) -> Fetch {
    let r = li / (DH / 4u);
    let c4 = li % (DH / 4u);
    var f: Fetch;
    f.x$j = FV(ld4(which, at, rs, rows, r + $ju * FS, c4));
    return f;
}

// x at f16 `at` (a multiple of 4) of T.
fn put4(x: FV, at: u32) {
    T[at / 4u] = vec4<f16>(x);
}

// A fetch into T from row `row`.
fn put(f: Fetch, row: u32, li: u32) {
    let at = (row + li / (DH / 4u)) * LD + 4u * (li % (DH / 4u));
    put4(f.x$j, at + $ju * FS * LD);
}

// The workgroup's 64 rows of input `which` into T (after the previous reads of T).
fn stage_own(which: u32, at: u32, rs: u32, rows: u32, li: u32) {
    let f0 = fetch(which, at, rs, rows, li);
    let f1 = fetch(which, at + 32u * rs, rs, max(rows, 32u) - 32u, li);
    workgroupBarrier();
    put(f0, 0u, li);
    put(f1, 32u, li);
    workgroupBarrier();
}

// Two fetched tiles into T's rows 0 and BC (after the previous reads of T).
fn stage(f0: Fetch, f1: Fetch, li: u32) {
    workgroupBarrier();
    put(f0, 0u, li);
    put(f1, BC, li);
    workgroupBarrier();
}

// Columns 16j .. +15 of rows 16·sg .. +15 of T as an A matrix.
fn own(sg: u32, j: u32) -> A16 {
    return coopLoadT<A16>(&T[(16u * sg * LD + 16u * j) / 4u], LD / 4u);
}

// The subgroup's rows (x0 | x1 | …, 16 × DH) against T's rows `row` .. +15: X · T[row..]ᵀ.
fn dots($params(x, A16), row: u32) -> C32 {
    let at = row * LD;
    let b$j = coopLoad<B16>(&T[(at + $16ju) / 4u], LD / 4u);
    var s = C32();
    s = coopMultiplyAdd(x$j, b$j, s);
    return s;
}

// Stores of a matrix, row-major, at vec4 `at4` of S, rows stride4 vec4s apart. The address
// is a parameter: naga 30's SPIR-V writer fails ("expression not cached") on a cooperative store
// whose index or stride is computed in the call.
fn to_s(x: C32, at4: u32, stride4: u32) {
    coopStoreT(x, &S[at4], stride4);
}

fn to_out(x: C32, at: u32, stride: u32) {
    coopStoreT(x, &out[at], stride);
}

// X · the tile at T's row `row` (32 rows) into a subgroup's 16 × 32 at `at` of S.
fn scores_to_s($params(x, A16), row: u32, at: u32) {
    to_s(dots($list(x), row), at / 4u, 8u);
    to_s(dots($list(x), row + 16u), (at + 16u) / 4u, 8u);
}

// acc + M · T[row .. row + 32, col .. col + 16] for M = (m0 | m1), 16 × 32.
fn mul_t(acc: C32, m0: A16, m1: A16, row: u32, col: u32) -> C32 {
    let b0 = coopLoadT<B16>(&T[(row * LD + col) / 4u], LD / 4u);
    let b1 = coopLoadT<B16>(&T[((row + 16u) * LD + col) / 4u], LD / 4u);
    return coopMultiplyAdd(m1, b1, coopMultiplyAdd(m0, b0, acc));
}

// Columns 16h .. +15 of the 16 × 32 f16 tile of P1 at `at`, as an A matrix.
fn from_p1(at: u32, h: u32) -> A16 {
    return coopLoadT<A16>(&P1[(at + 16u * h) / 4u], LP / 4u);
}

// A 16×16 block of output (rows r0.., columns col..) where some rows or columns fall outside:
// through S, each lane writing what exists. Rows at element at + r·rs of out.
fn store_edge(x: C32, at: u32, rs: u32, rows: u32, r0: u32, col: u32, sg: u32, lane: u32) {
    to_s(x, sg * SS / 4u, 4u);
    workgroupBarrier();
    for (var i = 0u; i < 8u; i++) {
        let e = lane + 32u * i;
        let r = r0 + e / 16u;
        let c = col + e % 16u;
        if r < rows && c < p.d {
            out[at + r * rs + c] = S[sg * SS / 4u + e / 4u][e % 4u];
        }
    }
    workgroupBarrier();
}

// NB blocks of output, o_j at columns 16j ..: rows 16·sg .. +15 of `rows`, row r at element
// at + r·rs of out.
fn store($params(o, C32), at: u32, rs: u32, rows: u32, sg: u32, lane: u32) {
    let r0 = 16u * sg;
    // Uniform across the workgroup: every row of its 64 and every column exists.
    if rows == BR && p.d == DH {
        let x = at + r0 * rs;
        to_out(o$j, x + $16ju, rs);
    } else {
        store_edge(o$j, at, rs, rows, r0, $16ju, sg, lane);
    }
}

// Rows of the key tile at k0 that the block's queries may see (0 past the last: nothing loads).
fn key_rows(bl: Block, k0: u32) -> u32 {
    return max(bl.keys, k0) - k0;
}

// The block's K and V tiles at key k0.
struct KV {
    k: Fetch,
    v: Fetch,
}

fn fetch_kv(bl: Block, k0: u32, li: u32) -> KV {
    let at = bl.kv + k0 * p.kv_rs;
    return KV(fetch(K, at, p.kv_rs, key_rows(bl, k0), li), fetch(V, at, p.kv_rs, key_rows(bl, k0), li));
}

// Whether keys j exist and queries t may see them (queries t themselves exist or not).
fn sees(t: vec4<u32>, j: vec4<u32>) -> vec4<bool> {
    return (j < vec4(p.tk)) & (vec4(p.causal == 0u) | (j <= t + vec4(p.shift)));
}

// The lane's vec4 of a tile row at step i (of 4): its half of the row, rotated so that the
// lanes spread over the banks.
fn quad_at(i: u32, lane: u32) -> u32 {
    return 4u * (lane / 16u) + (i + lane) % 4u;
}

// Columns 4q .. 4q + 3 from c0.
fn cols(c0: u32, q: u32) -> vec4<u32> {
    return vec4(c0 + 4u * q) + vec4(0u, 1u, 2u, 3u);
}

fn max4(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}

// dK/dV: the lane's probabilities at vec4 q of its row of S (its key against queries
// t0 + 4q ..), also into P1.
fn probs_t(s_at: u32, p_at: u32, q: u32, t0: u32, key: u32) -> vec4<f32> {
    let tc = cols(t0, q);
    let seen = (tc < vec4(p.tq)) & sees(tc, vec4(key));
    let pr = select(vec4(0.0), exp(S[s_at + q] * p.scale - R[q]), seen);
    P1[p_at + q] = vec4<f16>(pr);
    return pr;
}

// dS = P ∘ (dP - delta) · scale at vec4 q of the lane's row into P1 (dP in S; 0 where not `keep`).
fn put_ds(pr: vec4<f32>, s_at: u32, p_at: u32, q: u32, delta: vec4<f32>, keep: vec4<bool>) {
    P1[p_at + q] = vec4<f16>(select(vec4(0.0), pr * (S[s_at + q] - delta) * p.scale, keep));
}

// Forward: O and the log-sum-exp per query.
@compute @workgroup_size(128)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32,
           @builtin(subgroup_invocation_id) lane: u32) {
    let bl = block(wid, nwg);
    stage_own(Q, bl.at, p.q_rs, bl.rows, li);
    let x$j = own(sg, $ju);
    let r = 16u * sg + lane % 16u; // the lane's query in the block
    let t = bl.t0 + r;
    let s_at = (sg * SS + (lane % 16u) * 32u) / 4u; // the lane's row, in vec4s
    // Pass 1: the lane's running max and sum over its half of each tile's row.
    var m = NEG;
    var l = 0.0;
    var fk = fetch(K, bl.kv, p.kv_rs, key_rows(bl, 0u), li);
    for (var k0 = 0u; k0 < bl.keys; k0 += BC) {
        workgroupBarrier();
        put(fk, 0u, li);
        workgroupBarrier();
        // The next tile's loads are in flight while this one is multiplied.
        fk = fetch(K, bl.kv + (k0 + BC) * p.kv_rs, p.kv_rs, key_rows(bl, k0 + BC), li);
        scores_to_s($list(x), 0u, sg * SS);
        workgroupBarrier();
        var mx = m;
        for (var i = 0u; i < 4u; i++) {
            let q = quad_at(i, lane);
            mx = max(mx, max4(select(vec4(NEG), S[s_at + q] * p.scale, sees(vec4(t), cols(k0, q)))));
        }
        l *= exp(m - mx);
        for (var i = 0u; i < 4u; i++) {
            let q = quad_at(i, lane);
            let e = select(vec4(0.0), exp(S[s_at + q] * p.scale - mx), sees(vec4(t), cols(k0, q)));
            l += e.x + e.y + e.z + e.w;
        }
        m = mx;
    }
    let m2 = subgroupShuffleXor(m, 16u);
    let l2 = subgroupShuffleXor(l, 16u);
    let mm = max(m, m2);
    let ls = mm + log(l * exp(m - mm) + l2 * exp(m2 - mm));
    if lane < 16u && r < bl.rows { out[p.out2 + bl.row + r] = ls; }
    // Pass 2: O = Σ exp(S - lse) · V.
    var o$j = C32();
    let p_at = (sg * PS + (lane % 16u) * LP) / 4u;
    var kv = fetch_kv(bl, 0u, li);
    for (var k0 = 0u; k0 < bl.keys; k0 += BC) {
        stage(kv.k, kv.v, li);
        kv = fetch_kv(bl, k0 + BC, li);
        scores_to_s($list(x), 0u, sg * SS);
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let q = quad_at(i, lane);
            let pr = exp(S[s_at + q] * p.scale - ls);
            P1[p_at + q] = vec4<f16>(select(vec4(0.0), pr, sees(vec4(t), cols(k0, q))));
        }
        workgroupBarrier();
        let pma = from_p1(sg * PS, 0u);
        let pmb = from_p1(sg * PS, 1u);
        o$j = mul_t(o$j, pma, pmb, BC, $16ju);
    }
    workgroupBarrier(); // the last reads of S
    store($list(o), bl.at, p.q_rs, bl.rows, sg, lane);
}

// dQ = scale · Σ_j dS_j K_j with dS = P ∘ (dP - delta), P = exp(S - lse), dP = dO·Vᵀ. Also writes
// delta = dO·O per query, for the dK/dV kernel.
@compute @workgroup_size(128)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32,
               @builtin(subgroup_invocation_id) lane: u32) {
    let bl = block(wid, nwg);
    stage_own(Q, bl.at, p.q_rs, bl.rows, li);
    let x$j = own(sg, $ju);
    stage_own(DO, bl.at, p.q_rs, bl.rows, li);
    let y$j = own(sg, $ju);
    let r = 16u * sg + lane % 16u;
    let t = bl.t0 + r;
    let half = lane / 16u;
    var part = 0.0;
    var ls = 0.0;
    if r < bl.rows {
        for (var c4 = (DH / 8u) * half; c4 < (DH / 8u) * (half + 1u); c4++) {
            part += dot(ld4(DO, bl.at, p.q_rs, bl.rows, r, c4), ld4(AUX, bl.at, p.q_rs, bl.rows, r, c4));
        }
        ls = lse[p.lse_off + bl.row + r];
    }
    let delta = part + subgroupShuffleXor(part, 16u);
    if lane < 16u && r < bl.rows { out[p.out2 + bl.row + r] = delta; }
    let s_at = (sg * SS + (lane % 16u) * 32u) / 4u; // the lane's row, in vec4s
    let p_at = (sg * PS + (lane % 16u) * LP) / 4u;
    var g$j = C32();
    var kv = fetch_kv(bl, 0u, li);
    for (var k0 = 0u; k0 < bl.keys; k0 += BC) {
        stage(kv.k, kv.v, li);
        kv = fetch_kv(bl, k0 + BC, li);
        // P, then dP through the same tile of S: the kernel stays within 24 KiB (see the header).
        scores_to_s($list(x), 0u, sg * SS);
        workgroupBarrier();
        let q0 = quad_at(0u, lane);
        let q1 = quad_at(1u, lane);
        let q2 = quad_at(2u, lane);
        let q3 = quad_at(3u, lane);
        let p0 = exp(S[s_at + q0] * p.scale - ls);
        let p1 = exp(S[s_at + q1] * p.scale - ls);
        let p2 = exp(S[s_at + q2] * p.scale - ls);
        let p3 = exp(S[s_at + q3] * p.scale - ls);
        workgroupBarrier();
        scores_to_s($list(y), BC, sg * SS);
        workgroupBarrier();
        let ok = vec4(r < bl.rows);
        put_ds(p0, s_at, p_at, q0, vec4(delta), ok & sees(vec4(t), cols(k0, q0)));
        put_ds(p1, s_at, p_at, q1, vec4(delta), ok & sees(vec4(t), cols(k0, q1)));
        put_ds(p2, s_at, p_at, q2, vec4(delta), ok & sees(vec4(t), cols(k0, q2)));
        put_ds(p3, s_at, p_at, q3, vec4(delta), ok & sees(vec4(t), cols(k0, q3)));
        workgroupBarrier();
        let pma = from_p1(sg * PS, 0u);
        let pmb = from_p1(sg * PS, 1u);
        g$j = mul_t(g$j, pma, pmb, 0u, $16ju);
    }
    workgroupBarrier();
    store($list(g), bl.at, p.q_rs, bl.rows, sg, lane);
}

// A query tile of dK/dV on its way to shared memory: Q and dO rows, and thread li < 64's value
// of R (the LSE of query li, or the delta of query li - 32).
struct QTile {
    q: Fetch,
    o: Fetch,
    r: f32,
}

// Tile i of `tiles` (zeros past the last) of batch b: query head h0 + i / n, queries from
// t_first + (i % n) · BC.
fn fetch_q(b: u32, h0: u32, t_first: u32, n: u32, i: u32, tiles: u32, li: u32) -> QTile {
    var f: QTile;
    if i >= tiles { return f; }
    let h = h0 + i / n;
    let t0 = t_first + (i % n) * BC;
    let at = q_at(b, h, t0);
    f.q = fetch(Q, at, p.q_rs, p.tq - t0, li);
    f.o = fetch(DO, at, p.q_rs, p.tq - t0, li);
    let row = (b * p.hq + h) * p.tq + t0 + li % 32u; // of LSE and delta
    if li < 64u && t0 + li % 32u < p.tq {
        if li < 32u {
            f.r = lse[p.lse_off + row];
        } else {
            let e = p.aux_off + row;
            f.r = aux[e / 4u][e % 4u];
        }
    }
    return f;
}

// dK = scale · Σ_t dS_t Q_t and dV = Σ_t P_t dO_t over the queries of every query head of the
// GQA group: workgroup (64 keys, kv head, batch), query tiles of 32. Each subgroup's tiles are
// transposed (its 16 keys against the 32 queries).
@compute @workgroup_size(128)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
                 @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let group = p.hq / p.hkv;
    let j0 = wid.x * BR;
    let rows = min(BR, p.tk - j0);
    let at = kv_at(wid.z, wid.y, j0);
    stage_own(K, at, p.kv_rs, rows, li);
    let x$j = own(sg, $ju);
    stage_own(V, at, p.kv_rs, rows, li);
    let y$j = own(sg, $ju);
    let key = j0 + 16u * sg + lane % 16u;
    let s_at = (sg * SS + (lane % 16u) * 32u) / 4u; // the lane's row, in vec4s
    let p_at = (sg * PS + (lane % 16u) * LP) / 4u;
    var dv$j = C32();
    var dk$j = C32();
    // The first query that sees key j0.
    var t_first = 0u;
    if p.causal == 1u { t_first = max(j0, p.shift) - p.shift; }
    // Query tiles qt = 0 .. group · n: query head h0 + qt / n, queries from t_first + (qt % n) · BC.
    let n = (max(p.tq, t_first) - t_first + BC - 1u) / BC;
    let h0 = wid.y * group;
    var f = fetch_q(wid.z, h0, t_first, n, 0u, group * n, li);
    for (var qt = 0u; qt < group * n; qt++) {
        let t0 = t_first + (qt % n) * BC;
        if li < 64u { R[li / 4u][li % 4u] = f.r; } // R's last reads were before the last barrier
        stage(f.q, f.o, li);
        f = fetch_q(wid.z, h0, t_first, n, qt + 1u, group * n, li);
        // P into P1 for dV, then dP through the same tile of S and dS into P1 for dK: the kernel
        // stays within 24 KiB (see the header).
        scores_to_s($list(x), 0u, sg * SS);
        workgroupBarrier();
        let q0 = quad_at(0u, lane);
        let q1 = quad_at(1u, lane);
        let q2 = quad_at(2u, lane);
        let q3 = quad_at(3u, lane);
        let p0 = probs_t(s_at, p_at, q0, t0, key);
        let p1 = probs_t(s_at, p_at, q1, t0, key);
        let p2 = probs_t(s_at, p_at, q2, t0, key);
        let p3 = probs_t(s_at, p_at, q3, t0, key);
        workgroupBarrier();
        scores_to_s($list(y), BC, sg * SS);
        let pma = from_p1(sg * PS, 0u);
        let pmb = from_p1(sg * PS, 1u);
        dv$j = mul_t(dv$j, pma, pmb, BC, $16ju);
        workgroupBarrier();
        put_ds(p0, s_at, p_at, q0, R[BC / 4u + q0], vec4(true));
        put_ds(p1, s_at, p_at, q1, R[BC / 4u + q1], vec4(true));
        put_ds(p2, s_at, p_at, q2, R[BC / 4u + q2], vec4(true));
        put_ds(p3, s_at, p_at, q3, R[BC / 4u + q3], vec4(true));
        workgroupBarrier();
        let dma = from_p1(sg * PS, 0u);
        let dmb = from_p1(sg * PS, 1u);
        dk$j = mul_t(dk$j, dma, dmb, 0u, $16ju);
    }
    workgroupBarrier();
    store($list(dk), at, p.kv_rs, rows, sg, lane);
    store($list(dv), p.out2 + at, p.kv_rs, rows, sg, lane);
}
