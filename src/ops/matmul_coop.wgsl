// Batched C = op(A) · op(B) on cooperative matrices (tensor cores): inputs rounded to f16, products
// accumulated in f32. Opt-in only (ops::MatmulPrecision::F16): f16 keeps 11 significant bits and ±65504.
// A 128×256 tile of C per workgroup of 256 threads = 8 subgroups of 32 (checked on the host), in 2×4
// blocks of 64×64 = 4×4 matrices of 16×16 each. K in steps of 16, staged through shared memory as f16
// (tiles typed f16: a u32 tile would make u32 matrices, which NVIDIA's driver fails to compile).
// Tiles keep the orientation A and B have in memory, so global reads coalesce; coopLoad (column-major)
// or coopLoadT (row-major) reads them as op(A), op(B). Edge tiles go through a checked store.
enable f16;
enable wgpu_cooperative_matrix;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    b_off: u32,
    a_bs: u32, // batch strides in elements (0 = shared across the batch)
    b_bs: u32,
    ta: u32, // A is stored [K, M]
    tb: u32, // B is stored [N, K]
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = 128u;
const BN: u32 = 256u;
const BK: u32 = 16u;
const PAD: u32 = 8u; // f16s of padding per tile row (keeps rows 16-byte aligned)

var<workgroup> As: array<f16, 3072>; // [128][16 + PAD], or [16][128 + PAD] when A is stored [K, M]
var<workgroup> Bs: array<f16, 6144>; // [16][256 + PAD], or [256][16 + PAD] when B is stored [N, K]
var<workgroup> Cs: array<f32, 2048>; // one 16×16 result per subgroup, for the checked stores

// Elements i0..i0+3 of this thread's share of A's tile, whose corner is `org` in A as stored
// ([rows, cols] = dims); zeros outside A when `check`. Rows s.x + i·step, column s.y of the tile.
fn fetch_a(base: u32, org: vec2<u32>, dims: vec2<u32>, s: vec2<u32>, step: u32, i0: u32, check: bool) -> vec4<f16> {
    var v = vec4<f16>();
    for (var i = 0u; i < 4u; i++) {
        let r = org.x + s.x + (i0 + i) * step;
        let col = org.y + s.y;
        if !check || (r < dims.x && col < dims.y) {
            v[i] = f16(a[base + r * dims.y + col]);
        }
    }
    return v;
}

fn fetch_b(base: u32, org: vec2<u32>, dims: vec2<u32>, s: vec2<u32>, step: u32, i0: u32, check: bool) -> vec4<f16> {
    var v = vec4<f16>();
    for (var i = 0u; i < 4u; i++) {
        let r = org.x + s.x + (i0 + i) * step;
        let col = org.y + s.y;
        if !check || (r < dims.x && col < dims.y) {
            v[i] = f16(b[base + r * dims.y + col]);
        }
    }
    return v;
}

fn stage_a(s: vec2<u32>, step: u32, stride: u32, i0: u32, v: vec4<f16>) {
    for (var i = 0u; i < 4u; i++) {
        As[(s.x + (i0 + i) * step) * stride + s.y] = v[i];
    }
}

fn stage_b(s: vec2<u32>, step: u32, stride: u32, i0: u32, v: vec4<f16>) {
    for (var i = 0u; i < 4u; i++) {
        Bs[(s.x + (i0 + i) * step) * stride + s.y] = v[i];
    }
}

fn store_inside(acc: coop_mat16x16<f32, C>, at: u32) {
    let stride = p.n;
    coopStoreT(acc, &c[at], stride);
}

// Matrix (x, y) of every subgroup goes through Cs; the workgroup then writes what lies inside C.
fn store_edge(acc: coop_mat16x16<f32, C>, x: u32, y: u32, sg: u32, li: u32, c_base: u32, m0: u32, n0: u32) {
    let at = sg * 256u;
    let stride = 16u;
    coopStoreT(acc, &Cs[at], stride);
    workgroupBarrier();
    for (var j = 0u; j < 8u; j++) {
        // Subgroup j's block is (j / 4, j % 4); this thread takes element li of its matrix.
        let row = m0 + (j / 4u) * 64u + x * 16u + li / 16u;
        let col = n0 + (j % 4u) * 64u + y * 16u + li % 16u;
        if row < p.m && col < p.n {
            c[c_base + row * p.n + col] = Cs[j * 256u + li];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32,
               @builtin(subgroup_id) sg: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let a_base = p.a_off + wid.z * p.a_bs;
    let b_base = p.b_off + wid.z * p.b_bs;
    let ta = p.ta == 1u;
    let tb = p.tb == 1u;
    // Each tile in memory order: `cols` contiguous elements a row; thread li loads rows
    // li / cols + i·(256 / cols) of column li % cols. k0 moves the corner along `kdir`.
    let a_dims = select(vec2<u32>(p.m, p.k), vec2<u32>(p.k, p.m), ta);
    let a_cols = select(BK, BM, ta);
    let a_kdir = select(vec2<u32>(0u, 1u), vec2<u32>(1u, 0u), ta);
    let a_org = select(vec2<u32>(m0, 0u), vec2<u32>(0u, m0), ta);
    let a_s = vec2<u32>(li / a_cols, li % a_cols);
    let a_step = 256u / a_cols;
    let b_dims = select(vec2<u32>(p.k, p.n), vec2<u32>(p.n, p.k), tb);
    let b_cols = select(BN, BK, tb);
    let b_kdir = select(vec2<u32>(1u, 0u), vec2<u32>(0u, 1u), tb);
    let b_org = select(vec2<u32>(0u, n0), vec2<u32>(n0, 0u), tb);
    let b_s = vec2<u32>(li / b_cols, li % b_cols);
    let b_step = 256u / b_cols;
    // This subgroup's 64×64 block of the tile.
    let wm = (sg / 4u) * 64u;
    let wn = (sg % 4u) * 64u;

    let inside = m0 + BM <= p.m && n0 + BN <= p.n;
    let steps = (p.k + BK - 1u) / BK;
    let full_steps = p.k / BK;
    let check0 = !inside || full_steps == 0u;
    var ra0 = fetch_a(a_base, a_org, a_dims, a_s, a_step, 0u, check0);
    var ra1 = fetch_a(a_base, a_org, a_dims, a_s, a_step, 4u, check0);
    var rb0 = fetch_b(b_base, b_org, b_dims, b_s, b_step, 0u, check0);
    var rb1 = fetch_b(b_base, b_org, b_dims, b_s, b_step, 4u, check0);
    var rb2 = fetch_b(b_base, b_org, b_dims, b_s, b_step, 8u, check0);
    var rb3 = fetch_b(b_base, b_org, b_dims, b_s, b_step, 12u, check0);

    var c00 = coop_mat16x16<f32, C>(); var c01 = coop_mat16x16<f32, C>();
    var c02 = coop_mat16x16<f32, C>(); var c03 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>(); var c11 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>(); var c13 = coop_mat16x16<f32, C>();
    var c20 = coop_mat16x16<f32, C>(); var c21 = coop_mat16x16<f32, C>();
    var c22 = coop_mat16x16<f32, C>(); var c23 = coop_mat16x16<f32, C>();
    var c30 = coop_mat16x16<f32, C>(); var c31 = coop_mat16x16<f32, C>();
    var c32 = coop_mat16x16<f32, C>(); var c33 = coop_mat16x16<f32, C>();
    for (var s = 0u; s < steps; s++) {
        workgroupBarrier(); // the previous step's reads are done
        stage_a(a_s, a_step, a_cols + PAD, 0u, ra0);
        stage_a(a_s, a_step, a_cols + PAD, 4u, ra1);
        stage_b(b_s, b_step, b_cols + PAD, 0u, rb0);
        stage_b(b_s, b_step, b_cols + PAD, 4u, rb1);
        stage_b(b_s, b_step, b_cols + PAD, 8u, rb2);
        stage_b(b_s, b_step, b_cols + PAD, 12u, rb3);
        workgroupBarrier();
        if s + 1u < steps {
            let k0 = (s + 1u) * BK;
            let check = !inside || s + 1u >= full_steps;
            let ao = a_org + k0 * a_kdir;
            let bo = b_org + k0 * b_kdir;
            ra0 = fetch_a(a_base, ao, a_dims, a_s, a_step, 0u, check);
            ra1 = fetch_a(a_base, ao, a_dims, a_s, a_step, 4u, check);
            rb0 = fetch_b(b_base, bo, b_dims, b_s, b_step, 0u, check);
            rb1 = fetch_b(b_base, bo, b_dims, b_s, b_step, 4u, check);
            rb2 = fetch_b(b_base, bo, b_dims, b_s, b_step, 8u, check);
            rb3 = fetch_b(b_base, bo, b_dims, b_s, b_step, 12u, check);
        }
        var a0: coop_mat16x16<f16, A>;
        var a1: coop_mat16x16<f16, A>;
        var a2: coop_mat16x16<f16, A>;
        var a3: coop_mat16x16<f16, A>;
        var b0: coop_mat16x16<f16, B>;
        var b1: coop_mat16x16<f16, B>;
        var b2: coop_mat16x16<f16, B>;
        var b3: coop_mat16x16<f16, B>;
        if ta { // As is [k][m]: column-major fragments
            let s = BM + PAD;
            let i0 = wm + 0u;
            let i1 = wm + 16u;
            let i2 = wm + 32u;
            let i3 = wm + 48u;
            a0 = coopLoad<coop_mat16x16<f16, A>>(&As[i0], s);
            a1 = coopLoad<coop_mat16x16<f16, A>>(&As[i1], s);
            a2 = coopLoad<coop_mat16x16<f16, A>>(&As[i2], s);
            a3 = coopLoad<coop_mat16x16<f16, A>>(&As[i3], s);
        } else { // As is [m][k]: row-major
            let s = BK + PAD;
            let i0 = (wm + 0u) * s;
            let i1 = (wm + 16u) * s;
            let i2 = (wm + 32u) * s;
            let i3 = (wm + 48u) * s;
            a0 = coopLoadT<coop_mat16x16<f16, A>>(&As[i0], s);
            a1 = coopLoadT<coop_mat16x16<f16, A>>(&As[i1], s);
            a2 = coopLoadT<coop_mat16x16<f16, A>>(&As[i2], s);
            a3 = coopLoadT<coop_mat16x16<f16, A>>(&As[i3], s);
        }
        if tb { // Bs is [n][k]: column-major
            let s = BK + PAD;
            let i0 = (wn + 0u) * s;
            let i1 = (wn + 16u) * s;
            let i2 = (wn + 32u) * s;
            let i3 = (wn + 48u) * s;
            b0 = coopLoad<coop_mat16x16<f16, B>>(&Bs[i0], s);
            b1 = coopLoad<coop_mat16x16<f16, B>>(&Bs[i1], s);
            b2 = coopLoad<coop_mat16x16<f16, B>>(&Bs[i2], s);
            b3 = coopLoad<coop_mat16x16<f16, B>>(&Bs[i3], s);
        } else { // Bs is [k][n]: row-major
            let s = BN + PAD;
            let i0 = wn + 0u;
            let i1 = wn + 16u;
            let i2 = wn + 32u;
            let i3 = wn + 48u;
            b0 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[i0], s);
            b1 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[i1], s);
            b2 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[i2], s);
            b3 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[i3], s);
        }
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c02 = coopMultiplyAdd(a0, b2, c02);
        c03 = coopMultiplyAdd(a0, b3, c03);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
        c12 = coopMultiplyAdd(a1, b2, c12);
        c13 = coopMultiplyAdd(a1, b3, c13);
        c20 = coopMultiplyAdd(a2, b0, c20);
        c21 = coopMultiplyAdd(a2, b1, c21);
        c22 = coopMultiplyAdd(a2, b2, c22);
        c23 = coopMultiplyAdd(a2, b3, c23);
        c30 = coopMultiplyAdd(a3, b0, c30);
        c31 = coopMultiplyAdd(a3, b1, c31);
        c32 = coopMultiplyAdd(a3, b2, c32);
        c33 = coopMultiplyAdd(a3, b3, c33);
    }

    let c_base = wid.z * p.m * p.n;
    // coopStoreT to C needs 16-byte aligned rows (Vulkan's rule for cooperative-matrix pointers and strides).
    if inside && p.n % 4u == 0u {
        let row0 = m0 + wm;
        let col0 = n0 + wn;
        store_inside(c00, c_base + (row0 + 0u) * p.n + col0 + 0u);
        store_inside(c01, c_base + (row0 + 0u) * p.n + col0 + 16u);
        store_inside(c02, c_base + (row0 + 0u) * p.n + col0 + 32u);
        store_inside(c03, c_base + (row0 + 0u) * p.n + col0 + 48u);
        store_inside(c10, c_base + (row0 + 16u) * p.n + col0 + 0u);
        store_inside(c11, c_base + (row0 + 16u) * p.n + col0 + 16u);
        store_inside(c12, c_base + (row0 + 16u) * p.n + col0 + 32u);
        store_inside(c13, c_base + (row0 + 16u) * p.n + col0 + 48u);
        store_inside(c20, c_base + (row0 + 32u) * p.n + col0 + 0u);
        store_inside(c21, c_base + (row0 + 32u) * p.n + col0 + 16u);
        store_inside(c22, c_base + (row0 + 32u) * p.n + col0 + 32u);
        store_inside(c23, c_base + (row0 + 32u) * p.n + col0 + 48u);
        store_inside(c30, c_base + (row0 + 48u) * p.n + col0 + 0u);
        store_inside(c31, c_base + (row0 + 48u) * p.n + col0 + 16u);
        store_inside(c32, c_base + (row0 + 48u) * p.n + col0 + 32u);
        store_inside(c33, c_base + (row0 + 48u) * p.n + col0 + 48u);
    } else {
        store_edge(c00, 0u, 0u, sg, li, c_base, m0, n0);
        store_edge(c01, 0u, 1u, sg, li, c_base, m0, n0);
        store_edge(c02, 0u, 2u, sg, li, c_base, m0, n0);
        store_edge(c03, 0u, 3u, sg, li, c_base, m0, n0);
        store_edge(c10, 1u, 0u, sg, li, c_base, m0, n0);
        store_edge(c11, 1u, 1u, sg, li, c_base, m0, n0);
        store_edge(c12, 1u, 2u, sg, li, c_base, m0, n0);
        store_edge(c13, 1u, 3u, sg, li, c_base, m0, n0);
        store_edge(c20, 2u, 0u, sg, li, c_base, m0, n0);
        store_edge(c21, 2u, 1u, sg, li, c_base, m0, n0);
        store_edge(c22, 2u, 2u, sg, li, c_base, m0, n0);
        store_edge(c23, 2u, 3u, sg, li, c_base, m0, n0);
        store_edge(c30, 3u, 0u, sg, li, c_base, m0, n0);
        store_edge(c31, 3u, 1u, sg, li, c_base, m0, n0);
        store_edge(c32, 3u, 2u, sg, li, c_base, m0, n0);
        store_edge(c33, 3u, 3u, sg, li, c_base, m0, n0);
    }
}
