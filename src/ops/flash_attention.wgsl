// FlashAttention as tiled matrix products: the forward (online softmax), then the backward as two
// kernels: dQ (with delta = rowsum(dO ∘ O)), then dK and dV (they need delta).
// A workgroup of 128 threads owns 64 rows (queries; keys for dK/dV) and walks the other side in
// tiles. Each product is register-blocked like a matmul: a thread holds a 4×8 block of scores (a
// 4×4 block in dK/dV) and a 4-row block of its output. Operands go through shared memory in
// chunks of DC columns, so every kernel stays within 32 KiB of it (Apple GPUs' limit, and
// lavapipe's). DH, the head dim padded to 64 or 128, is prepended by the host, then
// flash_attention_common.wgsl.
@group(0) @binding(1) var<storage, read> q: array<f32>;     // [B, Hq, Tq, D] or [B, Tq, Hq, D]
@group(0) @binding(2) var<storage, read> k: array<f32>;     // [B, Hkv, Tk, D] or [B, Tk, Hkv, D]
@group(0) @binding(3) var<storage, read> v: array<f32>;     // as k
@group(0) @binding(4) var<storage, read_write> out: array<f32>; // O+LSE, dQ+delta, or dK+dV
@group(0) @binding(5) var<storage, read> dout: array<f32>;  // as q (backward)
@group(0) @binding(6) var<storage, read> aux: array<f32>;   // O for dQ, delta [B, Hq, Tq] for dK/dV
@group(0) @binding(7) var<storage, read> lse: array<f32>;   // [B, Hq, Tq] (backward)

const NT: u32 = 128u;      // threads per workgroup
const BQ: u32 = 32u;       // queries per tile in dK/dV
const DC: u32 = 16u;       // columns (or rows) per staged chunk
const DV: u32 = DH / 4u;   // vec4s per padded row
const G: u32 = DH / 32u;   // vec4s of an output row per thread: columns (8g + c)·4.. for g < G

// Shared memory, in vec4s: chunks staged at SA (the slabs of two products, [DC][64] each, or DC
// rows of DH for each of two), a tile of probabilities or score gradients at PS (64 × 64, or two
// of 64 × 32 in dK/dV), and the cross-thread row sums at RED (where no second product is staged).
const SA: u32 = 0u;
const PS: u32 = 1024u;
const RED: u32 = 512u;
var<workgroup> sh: array<vec4<f32>, 2048>;

fn elem(which: u32, at: u32) -> f32 {
    switch which {
        case 0u: { return q[p.q_off + at]; }
        case 1u: { return k[p.k_off + at]; }
        case 2u: { return v[p.v_off + at]; }
        case 3u: { return dout[p.do_off + at]; }
        default: { return aux[p.aux_off + at]; }
    }
}

// Which of the keys `first` the queries `t` see: keys that exist, queries before tq, and the
// causal mask.
fn seen(first: vec4<u32>, t: vec4<u32>, tq: u32) -> vec4<bool> {
    let causal = vec4(p.causal == 0u) | (first <= t + vec4(p.shift));
    return (first < vec4(p.tk)) & (t < vec4(tq)) & causal;
}

// Element e of input `which` if ok, else 0.
fn ld1(which: u32, e: u32, ok: bool) -> f32 {
    if ok { return elem(which, e); }
    return 0.0;
}

// Columns c .. c+3 of row r of input `which` (row r at element at + r·rs; zeros past `rows` and d).
fn ld4(which: u32, at: u32, rs: u32, rows: u32, r: u32, c: u32) -> vec4<f32> {
    if r >= rows { return vec4(0.0); }
    let e = at + r * rs + c;
    return vec4(ld1(which, e, c < p.d), ld1(which, e + 1u, c + 1u < p.d), ld1(which, e + 2u, c + 2u < p.d),
                ld1(which, e + 3u, c + 3u < p.d));
}

// A chunk of operands on its way from global to shared memory: a thread loads everything it
// will store first (and the next chunk while it computes), so the loads' latency is paid once.
struct Fetch {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
}

// The operands of a product A·Bᵀ: `a_rows` rows of input wa from element a_at, a_rs apart, and
// the same for B.
struct Pair {
    wa: u32,
    a_at: u32,
    a_rs: u32,
    a_rows: u32,
    wb: u32,
    b_at: u32,
    b_rs: u32,
    b_rows: u32,
}

// For `scores`: columns c0 .. c0 + DC of 64 rows of A (x0, x1: rows lid/4 and lid/4 + 32) and of
// 32·nb rows of B (x2, x3), four columns from (lid % 4)·4 each.
fn fetch_t(o: Pair, nb: u32, c0: u32, lid: u32) -> Fetch {
    let r = lid / 4u;
    let c = c0 + 4u * (lid % 4u);
    var f: Fetch;
    f.x0 = ld4(o.wa, o.a_at, o.a_rs, o.a_rows, r, c);
    f.x1 = ld4(o.wa, o.a_at, o.a_rs, o.a_rows, r + 32u, c);
    f.x2 = ld4(o.wb, o.b_at, o.b_rs, o.b_rows, r, c);
    if nb == 2u { f.x3 = ld4(o.wb, o.b_at, o.b_rs, o.b_rows, r + 32u, c); }
    return f;
}

// Stores x (row r, columns c .. c+3 of a chunk) into the slab at `base` transposed: element
// (r, c) at vec4 base + c·w + ((r/4) ^ (c % w)), lane r % 4, for a slab of 4w rows. The xor
// spreads a warp's stores over the banks while a vec4 still holds four consecutive rows.
fn put_t(x: vec4<f32>, base: u32, w: u32, r: u32, c: u32) {
    let r4 = r / 4u;
    let l = r % 4u;
    sh[base + c * w + (r4 ^ (c % w))][l] = x.x;
    sh[base + (c + 1u) * w + (r4 ^ ((c + 1u) % w))][l] = x.y;
    sh[base + (c + 2u) * w + (r4 ^ ((c + 2u) % w))][l] = x.z;
    sh[base + (c + 3u) * w + (r4 ^ ((c + 3u) % w))][l] = x.w;
}

// Stores a fetch_t chunk: A's slab at `base`, B's at base + 256.
fn put_fetched_t(f: Fetch, nb: u32, base: u32, lid: u32) {
    let r = lid / 4u;
    let c = 4u * (lid % 4u);
    put_t(f.x0, base, 16u, r, c);
    put_t(f.x1, base, 16u, r + 32u, c);
    put_t(f.x2, base + 256u, 8u * nb, r, c);
    if nb == 2u { put_t(f.x3, base + 256u, 16u, r + 32u, c); }
}

// For `mul_acc`: DC rows from row k0 of input `which`, as DC·DV vec4s: thread lid loads row
// lid/DV + i·NT/DV, columns (lid % DV)·4 .. +3, for i < 2 (DH = 64) or 4.
fn fetch_rows(which: u32, at: u32, rs: u32, rows: u32, k0: u32, lid: u32) -> Fetch {
    let r = k0 + lid / DV;
    let c = 4u * (lid % DV);
    let step = NT / DV;
    var f: Fetch;
    f.x0 = ld4(which, at, rs, rows, r, c);
    f.x1 = ld4(which, at, rs, rows, r + step, c);
    if G > 2u {
        f.x2 = ld4(which, at, rs, rows, r + 2u * step, c);
        f.x3 = ld4(which, at, rs, rows, r + 3u * step, c);
    }
    return f;
}

// Stores a fetch_rows chunk at `base`, row-major: element (r, c) at vec4 base + r·DV + c/4.
fn put_rows(f: Fetch, base: u32, lid: u32) {
    sh[base + lid] = f.x0;
    sh[base + NT + lid] = f.x1;
    if G > 2u {
        sh[base + 2u * NT + lid] = f.x2;
        sh[base + 3u * NT + lid] = f.x3;
    }
}

// A 4×4 block, and four rows of an output block: column i of g<k>, row i's columns
// (8k + c)·4 .. +3 for the thread's c (g2 and g3 only when DH = 128). Every product below
// indexes these with constants, so they stay in registers.
struct Acc {
    g0: mat4x4<f32>,
    g1: mat4x4<f32>,
    g2: mat4x4<f32>,
    g3: mat4x4<f32>,
}

// m + a ⊗ x: column i gains a[i] · x.
fn outer(a: vec4<f32>, x: vec4<f32>, m: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(fma(vec4(a.x), x, m[0]), fma(vec4(a.y), x, m[1]), fma(vec4(a.z), x, m[2]),
                       fma(vec4(a.w), x, m[3]));
}

// Column i times a[i].
fn scale_cols(m: mat4x4<f32>, a: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(m[0] * a.x, m[1] * a.y, m[2] * a.z, m[3] * a.w);
}

// Scores of one or two products (x, and y when `two`), over the d columns, for A rows
// 4ia .. 4ia+3 of 64 and B rows (8h + ib)·4 .. +3 for h < nb of 32·nb: column i of s0 (h = 0)
// and s1 (h = 1) holds A row 4ia + i of x against those B rows; d0 and d1 the same for y.
struct Tile {
    s0: mat4x4<f32>,
    s1: mat4x4<f32>,
    d0: mat4x4<f32>,
    d1: mat4x4<f32>,
}

// s plus column c of the staged slabs' products (w: vec4s per row of B's slab).
fn score_col(s: Tile, c: u32, w: u32, two: bool, nb: u32, ia: u32, ib: u32) -> Tile {
    var r = s;
    let at = SA + c * 16u + (ia ^ c);
    let bt = SA + 256u + c * w + (ib ^ (c % w));
    let bt1 = SA + 256u + c * 16u + ((ib + 8u) ^ c);
    r.s0 = outer(sh[at], sh[bt], s.s0);
    if nb == 2u { r.s1 = outer(sh[at], sh[bt1], s.s1); }
    if two {
        r.d0 = outer(sh[at + 512u], sh[bt + 512u], s.d0);
        if nb == 2u { r.d1 = outer(sh[at + 512u], sh[bt1 + 512u], s.d1); }
    }
    return r;
}

fn scores(x: Pair, y: Pair, two: bool, nb: u32, ia: u32, ib: u32, lid: u32) -> Tile {
    var s: Tile;
    let w = 8u * nb;
    var f = fetch_t(x, nb, 0u, lid);
    var g: Fetch;
    if two { g = fetch_t(y, nb, 0u, lid); }
    for (var c0 = 0u; c0 < p.d; c0 += DC) {
        workgroupBarrier();
        put_fetched_t(f, nb, SA, lid);
        if two { put_fetched_t(g, nb, SA + 512u, lid); }
        workgroupBarrier();
        if c0 + DC < p.d {
            f = fetch_t(x, nb, c0 + DC, lid);
            if two { g = fetch_t(y, nb, c0 + DC, lid); }
        }
        // Four columns per iteration: some drivers (the H100's) do not unroll this loop
        // themselves (docs/PERFORMANCE.md).
        for (var c = 0u; c < DC; c += 4u) {
            s = score_col(s, c, w, two, nb, ia, ib);
            s = score_col(s, c + 1u, w, two, nb, ia, ib);
            s = score_col(s, c + 2u, w, two, nb, ia, ib);
            s = score_col(s, c + 3u, w, two, nb, ia, ib);
        }
    }
    return s;
}

// acc + mu ⊗ (row of X staged at vec4 `at`, the thread's columns).
fn acc_row(acc: Acc, mu: vec4<f32>, at: u32) -> Acc {
    var r = acc;
    r.g0 = outer(mu, sh[at], acc.g0);
    r.g1 = outer(mu, sh[at + 8u], acc.g1);
    if G > 2u {
        r.g2 = outer(mu, sh[at + 16u], acc.g2);
        r.g3 = outer(mu, sh[at + 24u], acc.g3);
    }
    return r;
}

// Rows 4ri .. 4ri+3 of the tile at vec4 `m` (mw vec4s per row), columns 4·col .. +3, transposed:
// column u holds the four rows' entries in column 4·col + u.
fn m_cols(m: u32, mw: u32, ri: u32, col: u32) -> mat4x4<f32> {
    let at = m + 4u * ri * mw + col;
    return transpose(mat4x4<f32>(sh[at], sh[at + mw], sh[at + 2u * mw], sh[at + 3u * mw]));
}

struct Acc2 {
    a: Acc,
    b: Acc,
}

// acc plus the products of the tiles' columns 4·col .. +3 with the four X (and Y) rows staged
// from vec4 x (see mul_acc).
fn mul_rows(acc: Acc2, m: u32, m2: u32, mw: u32, two: bool, col: u32, x: u32, ri: u32) -> Acc2 {
    var r = acc;
    let mt = m_cols(m, mw, ri, col);
    r.a = acc_row(r.a, mt[0], x);
    r.a = acc_row(r.a, mt[1], x + DV);
    r.a = acc_row(r.a, mt[2], x + 2u * DV);
    r.a = acc_row(r.a, mt[3], x + 3u * DV);
    if two {
        let mt2 = m_cols(m2, mw, ri, col);
        r.b = acc_row(r.b, mt2[0], x + 512u);
        r.b = acc_row(r.b, mt2[1], x + 512u + DV);
        r.b = acc_row(r.b, mt2[2], x + 512u + 2u * DV);
        r.b = acc_row(r.b, mt2[3], x + 512u + 3u * DV);
    }
    return r;
}

// acc.a + M·X for M rows 4ri .. 4ri+3 of the tile at vec4 `m` (mw vec4s per row; zero past column
// `rows`) and X = `rows` rows of input `wx` from element `at`, rs apart (see Acc); when `two`,
// also acc.b + M2·Y for the tile at m2 and input wy (same rows).
fn mul_acc(acc: Acc2, m: u32, m2: u32, mw: u32, wx: u32, wy: u32, two: bool, at: u32, rs: u32, rows: u32,
           ri: u32, cx: u32, lid: u32) -> Acc2 {
    var r = acc;
    var f = fetch_rows(wx, at, rs, rows, 0u, lid);
    var g: Fetch;
    if two { g = fetch_rows(wy, at, rs, rows, 0u, lid); }
    for (var k0 = 0u; k0 < rows; k0 += DC) {
        workgroupBarrier();
        put_rows(f, SA, lid);
        if two { put_rows(g, SA + 512u, lid); }
        workgroupBarrier();
        if k0 + DC < rows {
            f = fetch_rows(wx, at, rs, rows, k0 + DC, lid);
            if two { g = fetch_rows(wy, at, rs, rows, k0 + DC, lid); }
        }
        // The DC = 16 staged rows, unrolled (as in `scores`).
        let col = k0 / 4u;
        r = mul_rows(r, m, m2, mw, two, col, SA + cx, ri);
        r = mul_rows(r, m, m2, mw, two, col + 1u, SA + 4u * DV + cx, ri);
        r = mul_rows(r, m, m2, mw, two, col + 2u, SA + 8u * DV + cx, ri);
        r = mul_rows(r, m, m2, mw, two, col + 3u, SA + 12u * DV + cx, ri);
    }
    return r;
}

// Writes x (columns col .. col+3 of row `row`) times scale to out, if the row and columns exist.
fn store_row(x: vec4<f32>, at: u32, rs: u32, row: u32, rows: u32, col: u32, scale: f32) {
    if row < rows {
        for (var c = 0u; c < 4u; c++) {
            if col + c < p.d { out[at + row * rs + col + c] = x[c] * scale; }
        }
    }
}

fn store_g(m: mat4x4<f32>, at: u32, rs: u32, rows: u32, ri: u32, col: u32, scale: vec4<f32>) {
    store_row(m[0], at, rs, 4u * ri, rows, col, scale.x);
    store_row(m[1], at, rs, 4u * ri + 1u, rows, col, scale.y);
    store_row(m[2], at, rs, 4u * ri + 2u, rows, col, scale.z);
    store_row(m[3], at, rs, 4u * ri + 3u, rows, col, scale.w);
}

// Writes acc (as mul_acc lays it out), row i times scale[i]: rows 4ri + i < rows of out from
// element `at`, rs apart, the first d columns.
fn store(acc: Acc, at: u32, rs: u32, rows: u32, ri: u32, cx: u32, scale: vec4<f32>) {
    store_g(acc.g0, at, rs, rows, ri, 4u * cx, scale);
    store_g(acc.g1, at, rs, rows, ri, 4u * (8u + cx), scale);
    if G > 2u {
        store_g(acc.g2, at, rs, rows, ri, 4u * (16u + cx), scale);
        store_g(acc.g3, at, rs, rows, ri, 4u * (24u + cx), scale);
    }
}

// Four rows of a tile to shared memory at vec4 `at`, `stride` apart.
fn put(m: mat4x4<f32>, at: u32, stride: u32) {
    sh[at] = m[0];
    sh[at + stride] = m[1];
    sh[at + 2u * stride] = m[2];
    sh[at + 3u * stride] = m[3];
}

// In the forward and dQ kernels, thread lid holds queries 4·(lid/8) .. +3 of its block (see Block)
// against keys (8h + lid%8)·4 .. +3 of each tile, h < 2, and output columns (8g + lid%8)·4 .. +3.

// Which of the four keys from k0 + (8h + tk8)·4 the block's query r sees. Rows past tq see keys
// too, so that their scores stay finite.
fn seen_keys(bl: Block, r: u32, tk8: u32, k0: u32, h: u32) -> vec4<bool> {
    let first = vec4(k0 + (8u * h + tk8) * 4u) + vec4(0u, 1u, 2u, 3u);
    return seen(first, vec4(bl.t0 + r), p.tq + BR);
}

// A tile's scores times scale, NEG where the query does not see the key.
fn masked(s: mat4x4<f32>, bl: Block, tq4: u32, tk8: u32, k0: u32, h: u32) -> mat4x4<f32> {
    let n = vec4(NEG);
    let r = 4u * tq4;
    return mat4x4<f32>(select(n, s[0] * p.scale, seen_keys(bl, r, tk8, k0, h)),
                       select(n, s[1] * p.scale, seen_keys(bl, r + 1u, tk8, k0, h)),
                       select(n, s[2] * p.scale, seen_keys(bl, r + 2u, tk8, k0, h)),
                       select(n, s[3] * p.scale, seen_keys(bl, r + 3u, tk8, k0, h)));
}

fn max4(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}

fn sum4(x: vec4<f32>) -> f32 {
    return x.x + x.y + x.z + x.w;
}

// exp(s - m) of a masked score, 0 where masked.
fn prob(s: vec4<f32>, m: f32) -> vec4<f32> {
    return select(vec4(0.0), exp(s - vec4(m)), s > vec4(0.5 * NEG));
}

fn probs(s: mat4x4<f32>, m: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(prob(s[0], m.x), prob(s[1], m.y), prob(s[2], m.z), prob(s[3], m.w));
}

// x[i] to the second output (LSE or delta) for the block's queries r + i that exist.
fn store_per_row(x: vec4<f32>, bl: Block, r: u32) {
    for (var i = 0u; i < 4u; i++) {
        if r + i < bl.rows { out[p.out2 + bl.row + r + i] = x[i]; }
    }
}

// Σ over the eight threads of a row (lid % 8) of x, through RED.
fn row_sum(x: vec4<f32>, tq4: u32, tk8: u32) -> vec4<f32> {
    sh[RED + tk8 * 16u + tq4] = x;
    workgroupBarrier();
    var sum = vec4(0.0);
    for (var t = 0u; t < 8u; t++) { sum += sh[RED + t * 16u + tq4]; }
    return sum;
}

// Forward: O and the log-sum-exp per query.
@compute @workgroup_size(NT)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let bl = block(wid, nwg);
    let tq4 = lid / 8u;
    let tk8 = lid % 8u;
    var o: Acc2;
    var m = vec4(NEG);
    var l = vec4(0.0); // this thread's part of each row's sum
    for (var k0 = 0u; k0 < bl.keys; k0 += BR) {
        let kr = min(BR, p.tk - k0);
        let kat = bl.kv + k0 * p.kv_rs;
        let qk = Pair(Q, bl.at, p.q_rs, bl.rows, K, kat, p.kv_rs, kr);
        let s = scores(qk, qk, false, 2u, tq4, tk8, lid);
        let s0 = masked(s.s0, bl, tq4, tk8, k0, 0u);
        let s1 = masked(s.s1, bl, tq4, tk8, k0, 1u);
        let mx = vec4(max(max4(s0[0]), max4(s1[0])), max(max4(s0[1]), max4(s1[1])),
                      max(max4(s0[2]), max4(s1[2])), max(max4(s0[3]), max4(s1[3])));
        // The row maxima over the eight threads (the last reads of RED were before mul_acc's
        // barriers).
        sh[RED + tk8 * 16u + tq4] = mx;
        workgroupBarrier();
        var m_new = m;
        for (var t = 0u; t < 8u; t++) { m_new = max(m_new, sh[RED + t * 16u + tq4]); }
        let alpha = exp(m - m_new);
        m = m_new;
        let p0 = probs(s0, m);
        let p1 = probs(s1, m);
        l = l * alpha + vec4(sum4(p0[0] + p1[0]), sum4(p0[1] + p1[1]), sum4(p0[2] + p1[2]), sum4(p0[3] + p1[3]));
        put(p0, PS + 4u * tq4 * 16u + tk8, 16u);
        put(p1, PS + 4u * tq4 * 16u + 8u + tk8, 16u);
        o.a = Acc(scale_cols(o.a.g0, alpha), scale_cols(o.a.g1, alpha), scale_cols(o.a.g2, alpha),
                  scale_cols(o.a.g3, alpha));
        o = mul_acc(o, PS, PS, 16u, V, V, false, kat, p.kv_rs, kr, tq4, tk8, lid);
    }
    let sum = row_sum(l, tq4, tk8);
    store(o.a, bl.at, p.q_rs, bl.rows, tq4, tk8, 1.0 / sum);
    if tk8 == 0u { store_per_row(m + log(sum), bl, 4u * tq4); }
}

// Part of dO·O for the block's query r: columns c, c + 8, ...
fn delta_part(bl: Block, r: u32, c: u32) -> f32 {
    var x = 0.0;
    if r < bl.rows {
        let at = bl.at + r * p.q_rs;
        for (var e = c; e < p.d; e += 8u) { x += elem(DO, at + e) * elem(AUX, at + e); }
    }
    return x;
}


// Score gradients dS = P ∘ (dP - delta) of four queries against four keys, P = exp(S - lse).
fn dscores(s: mat4x4<f32>, dp: mat4x4<f32>, ls: vec4<f32>, de: vec4<f32>, bl: Block, tq4: u32, tk8: u32,
           k0: u32, h: u32) -> mat4x4<f32> {
    let r = 4u * tq4;
    let z = vec4(0.0);
    let p0 = select(z, exp(s[0] * p.scale - vec4(ls.x)), seen_keys(bl, r, tk8, k0, h));
    let p1 = select(z, exp(s[1] * p.scale - vec4(ls.y)), seen_keys(bl, r + 1u, tk8, k0, h));
    let p2 = select(z, exp(s[2] * p.scale - vec4(ls.z)), seen_keys(bl, r + 2u, tk8, k0, h));
    let p3 = select(z, exp(s[3] * p.scale - vec4(ls.w)), seen_keys(bl, r + 3u, tk8, k0, h));
    return mat4x4<f32>(p0 * (dp[0] - vec4(de.x)), p1 * (dp[1] - vec4(de.y)), p2 * (dp[2] - vec4(de.z)),
                       p3 * (dp[3] - vec4(de.w)));
}

// dQ = scale · Σ_j dS_j K_j with dS = P ∘ (dP - delta), P = exp(S - lse), dP = dO·Vᵀ. Also writes
// delta = dO·O per query, for the dK/dV kernel.
@compute @workgroup_size(NT)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let bl = block(wid, nwg);
    let tq4 = lid / 8u;
    let tk8 = lid % 8u;
    let r = 4u * tq4;
    let part = vec4(delta_part(bl, r, tk8), delta_part(bl, r + 1u, tk8), delta_part(bl, r + 2u, tk8),
                    delta_part(bl, r + 3u, tk8));
    let delta = row_sum(part, tq4, tk8);
    let at = bl.row + r;
    let t = bl.t0 + r;
    let ls = vec4(row_val(at, t, false), row_val(at + 1u, t + 1u, false), row_val(at + 2u, t + 2u, false),
                  row_val(at + 3u, t + 3u, false));
    if tk8 == 0u { store_per_row(delta, bl, r); }
    var dq: Acc2;
    for (var k0 = 0u; k0 < bl.keys; k0 += BR) {
        let kr = min(BR, p.tk - k0);
        let kat = bl.kv + k0 * p.kv_rs;
        let s = scores(Pair(Q, bl.at, p.q_rs, bl.rows, K, kat, p.kv_rs, kr),
                       Pair(DO, bl.at, p.q_rs, bl.rows, V, kat, p.kv_rs, kr), true, 2u, tq4, tk8, lid);
        put(dscores(s.s0, s.d0, ls, delta, bl, tq4, tk8, k0, 0u), PS + r * 16u + tk8, 16u);
        put(dscores(s.s1, s.d1, ls, delta, bl, tq4, tk8, k0, 1u), PS + r * 16u + 8u + tk8, 16u);
        dq = mul_acc(dq, PS, PS, 16u, K, K, false, kat, p.kv_rs, kr, tq4, tk8, lid);
    }
    store(dq.a, bl.at, p.q_rs, bl.rows, tq4, tk8, vec4(p.scale));
}

// P and dS of key j against four queries t (their LSE ls and delta de).
fn key_probs(s: vec4<f32>, key: u32, t: vec4<u32>, ls: vec4<f32>) -> vec4<f32> {
    return select(vec4(0.0), exp(s * p.scale - ls), seen(vec4(key), t, p.tq));
}

// LSE (or delta, from aux) at row `at` of [B, Hq, Tq] if query t exists, else 0.
fn row_val(at: u32, t: u32, from_aux: bool) -> f32 {
    if t >= p.tq { return 0.0; }
    if from_aux { return aux[p.aux_off + at]; }
    return lse[p.lse_off + at];
}

// dK = scale · Σ_t dS_t Q_t and dV = Σ_t P_t dO_t over the queries of every query head of the
// GQA group: workgroup (64 keys, kv head, batch), query tiles of 32. Thread lid holds keys
// 4·(lid/8) .. +3 against queries (lid%8)·4 .. +3 of a tile, and output columns (8g + lid%8)·4 .. +3.
// The tile's P and dS are stored transposed at PS and PS + 512 (64 keys × 32 queries each).
@compute @workgroup_size(NT)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = p.hq / p.hkv;
    let j0 = wid.x * BR;
    let rows = min(BR, p.tk - j0);
    let at = kv_at(wid.z, wid.y, j0);
    let k4 = lid / 8u;
    let q8 = lid % 8u;
    let key = j0 + 4u * k4;
    var g: Acc2; // dV, dK
    // The first query that sees key j0.
    var t_first = 0u;
    if p.causal == 1u { t_first = max(j0, p.shift) - p.shift; }
    for (var hh = 0u; hh < group; hh++) {
        let h = wid.y * group + hh;
        let row0 = (wid.z * p.hq + h) * p.tq; // of LSE and delta
        for (var t0 = t_first; t0 < p.tq; t0 += BQ) {
            let qrows = min(BQ, p.tq - t0);
            let qat = q_at(wid.z, h, t0);
            let s = scores(Pair(K, at, p.kv_rs, rows, Q, qat, p.q_rs, qrows),
                           Pair(V, at, p.kv_rs, rows, DO, qat, p.q_rs, qrows), true, 1u, k4, q8, lid);
            let t = vec4(t0 + 4u * q8) + vec4(0u, 1u, 2u, 3u);
            let r = row0 + t0 + 4u * q8;
            let ls = vec4(row_val(r, t.x, false), row_val(r + 1u, t.y, false), row_val(r + 2u, t.z, false),
                          row_val(r + 3u, t.w, false));
            let de = vec4(row_val(r, t.x, true), row_val(r + 1u, t.y, true), row_val(r + 2u, t.z, true),
                          row_val(r + 3u, t.w, true));
            let pt = mat4x4<f32>(key_probs(s.s0[0], key, t, ls), key_probs(s.s0[1], key + 1u, t, ls),
                                 key_probs(s.s0[2], key + 2u, t, ls), key_probs(s.s0[3], key + 3u, t, ls));
            let dst = mat4x4<f32>(pt[0] * (s.d0[0] - de), pt[1] * (s.d0[1] - de), pt[2] * (s.d0[2] - de),
                                  pt[3] * (s.d0[3] - de));
            put(pt, PS + 4u * k4 * 8u + q8, 8u);
            put(dst, PS + 512u + 4u * k4 * 8u + q8, 8u);
            g = mul_acc(g, PS, PS + 512u, 8u, DO, Q, true, qat, p.q_rs, qrows, k4, q8, lid);
        }
    }
    store(g.b, at, p.kv_rs, rows, k4, q8, vec4(p.scale));
    store(g.a, p.out2 + at, p.kv_rs, rows, k4, q8, vec4(1.0));
}
