// Batched C = op(A) · op(B) on cooperative matrices (tensor cores): inputs rounded to f16, products
// accumulated in f32. Opt-in only (ops::MatmulPrecision::F16): f16 keeps 11 significant bits and ±65504.
// A 128×128 tile of C per workgroup of 128 threads = 4 subgroups of 32 (checked on the host), in 2×2
// blocks of 64×64 = 4×4 matrices of 16×16 each; K in steps of 32, staged through shared memory as
// f16 (24 KiB with Cs). The tiles are vec4<f16>s, one store per fetched vec4; coopLoad counts their
// offsets and strides in vec4s. (Typed u32 they would make u32 matrices, which NVIDIA's driver
// fails to compile.) docs/PERFORMANCE.md has what each of these choices measured.
// Tiles keep the orientation A and B have in memory, so global reads coalesce (as vec4s when the
// matrices allow), and coopLoad (column-major) or coopLoadT (row-major) reads them as op(A), op(B).
// Every index into a local vector or array is a constant (a dynamically indexed one goes to local
// memory). Edge tiles go through a checked store.
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
    aligned: u32, // 1: offsets, strides and row lengths are multiples of 4, so vec4 reads line up
    splits: u32, // split-K as in matmul.wgsl: split s sums K range [s·ks, s·ks + ks) into its own
    ks: u32,     // slice of C, [splits, batch, M, N]; the host adds the slices
    c_off: u32,  // element offset of C, a multiple of 4
    acc: u32,    // 1: C += the product (inside tiles start from C, edge tiles add as they store)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 32u;
const PAD: u32 = 8u; // f16s of padding per tile row (keeps rows 16-byte aligned)

var<workgroup> As: array<vec4<f16>, 1280>; // [128][32 + PAD] f16s, or [32][128 + PAD] when A is stored [K, M]
var<workgroup> Bs: array<vec4<f16>, 1280>; // [32][128 + PAD], or [128][32 + PAD] when B is stored [N, K]
var<workgroup> Cs: array<f32, 1024>; // one 16×16 result per subgroup, for the checked stores

// Elements (r, col..col+3) of a row-major matrix with rows of `ld` elements at offset `base`;
// zeros at rows from `rows` and columns from `cols` on.
fn load_a(base: u32, r: u32, col: u32, rows: u32, cols: u32, ld: u32) -> vec4<f32> {
    var v = vec4<f32>();
    if r >= rows || col >= cols {
        return v;
    }
    let at = base + r * ld + col;
    if p.aligned == 1u {
        return a[at / 4u];
    }
    v.x = a[at / 4u][at % 4u];
    if col + 1u < cols { v.y = a[(at + 1u) / 4u][(at + 1u) % 4u]; }
    if col + 2u < cols { v.z = a[(at + 2u) / 4u][(at + 2u) % 4u]; }
    if col + 3u < cols { v.w = a[(at + 3u) / 4u][(at + 3u) % 4u]; }
    return v;
}

// load_a's mirror for B (WGSL cannot pass a storage buffer to a function).
fn load_b(base: u32, r: u32, col: u32, rows: u32, cols: u32, ld: u32) -> vec4<f32> {
    var v = vec4<f32>();
    if r >= rows || col >= cols {
        return v;
    }
    let at = base + r * ld + col;
    if p.aligned == 1u {
        return b[at / 4u];
    }
    v.x = b[at / 4u][at % 4u];
    if col + 1u < cols { v.y = b[(at + 1u) / 4u][(at + 1u) % 4u]; }
    if col + 2u < cols { v.z = b[(at + 2u) / 4u][(at + 2u) % 4u]; }
    if col + 3u < cols { v.w = b[(at + 3u) / 4u][(at + 3u) % 4u]; }
    return v;
}

// v at f16 `at` (a multiple of 4) of As.
fn put_a(at: u32, v: vec4<f32>) {
    As[at / 4u] = vec4<f16>(v);
}

// put_a's mirror for Bs.
fn put_b(at: u32, v: vec4<f32>) {
    Bs[at / 4u] = vec4<f16>(v);
}

// This thread's share of a tile with `cols` elements a row as stored (cols / 4 vec4s): its i-th
// vec4 is in row r + i·step (step = 1024 / cols), from element column c.
struct Share {
    r: u32,
    c: u32,   // first element column
    step: u32,
}

fn share(li: u32, cols: u32) -> Share {
    let per_row = cols / 4u;
    return Share(li / per_row, (li % per_row) * 4u, 128u / per_row);
}

// store_inside's mirror: C's 16×16 block at `at`, to add the product to.
fn load_inside(at: u32) -> coop_mat16x16<f32, C> {
    return coopLoadT<coop_mat16x16<f32, C>>(&c[at], p.n);
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
        // Subgroup g's block is (g / 2, g % 2); this thread takes elements li and li + 128 of its
        // matrix.
        let g = j / 2u;
        let e = li + 128u * (j % 2u);
        let row = m0 + (g / 2u) * 64u + x * 16u + e / 16u;
        let col = n0 + (g % 2u) * 64u + y * 16u + e % 16u;
        if row < p.m && col < p.n {
            let at = c_base + row * p.n + col;
            if p.acc == 1u {
                c[at] += Cs[g * 256u + e];
            } else {
                c[at] = Cs[g * 256u + e];
            }
        }
    }
    workgroupBarrier();
}

// Each K step stages the tiles fetched in the previous one, fetches the next into registers and
// multiplies. The transposes are uniform branches (cooperative operations need uniform control flow).
@compute @workgroup_size(128)
fn matmul_coop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32) {
    let ta = p.ta == 1u;
    let tb = p.tb == 1u;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let products = nwg.z / p.splits;
    let batch = wid.z % products;
    let k_begin = (wid.z / products) * p.ks;
    let k_end = max(k_begin, min(p.k, k_begin + p.ks));
    let a_base = p.a_off + batch * p.a_bs;
    let b_base = p.b_off + batch * p.b_bs;
    // A as stored: [M, K] (tile 128 × 16) or [K, M] (16 × 128); B: [K, N] (16 × 256) or [N, K] (256 × 16).
    let sa = share(li, select(BK, BM, ta));
    let sb = share(li, select(BN, BK, tb));
    let a_stride = select(BK, BM, ta) + PAD;
    let b_stride = select(BN, BK, tb) + PAD;
    var ra: array<vec4<f32>, 8>;
    var rb: array<vec4<f32>, 8>;
    // This subgroup's 64×64 block of the tile.
    let wm = (sg / 2u) * 64u;
    let wn = (sg % 2u) * 64u;
    var c00 = coop_mat16x16<f32, C>(); var c01 = coop_mat16x16<f32, C>();
    var c02 = coop_mat16x16<f32, C>(); var c03 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>(); var c11 = coop_mat16x16<f32, C>();
    var c12 = coop_mat16x16<f32, C>(); var c13 = coop_mat16x16<f32, C>();
    var c20 = coop_mat16x16<f32, C>(); var c21 = coop_mat16x16<f32, C>();
    var c22 = coop_mat16x16<f32, C>(); var c23 = coop_mat16x16<f32, C>();
    var c30 = coop_mat16x16<f32, C>(); var c31 = coop_mat16x16<f32, C>();
    var c32 = coop_mat16x16<f32, C>(); var c33 = coop_mat16x16<f32, C>();
    let c_base = p.c_off + wid.z * p.m * p.n;
    // coopStoreT to C needs 16-byte aligned rows (Vulkan's rule for cooperative-matrix pointers and strides).
    // `&`, not `&&`: naga's uniformity analysis loses track of a short-circuit kept in a `let`.
    let inside = (m0 + BM <= p.m) & (n0 + BN <= p.n) & (p.n % 4u == 0u);
    let at = c_base + (m0 + wm) * p.n + n0 + wn;
    let r = 16u * p.n;
    if inside & (p.acc == 1u) {
        c00 = load_inside(at);
        c01 = load_inside(at + 16u);
        c02 = load_inside(at + 32u);
        c03 = load_inside(at + 48u);
        c10 = load_inside(at + r);
        c11 = load_inside(at + r + 16u);
        c12 = load_inside(at + r + 32u);
        c13 = load_inside(at + r + 48u);
        c20 = load_inside(at + 2u * r);
        c21 = load_inside(at + 2u * r + 16u);
        c22 = load_inside(at + 2u * r + 32u);
        c23 = load_inside(at + 2u * r + 48u);
        c30 = load_inside(at + 3u * r);
        c31 = load_inside(at + 3u * r + 16u);
        c32 = load_inside(at + 3u * r + 32u);
        c33 = load_inside(at + 3u * r + 48u);
    }
    let steps = (k_end - k_begin + BK - 1u) / BK;
    let fast = p.aligned == 1u && m0 + BM <= p.m && n0 + BN <= p.n;
    for (var s = 0u; s <= steps; s++) {
        if s > 0u {
            workgroupBarrier(); // the previous step's reads of the tiles are done
            put_a((sa.r + 0u * sa.step) * a_stride + sa.c, ra[0]);
            put_a((sa.r + 1u * sa.step) * a_stride + sa.c, ra[1]);
            put_a((sa.r + 2u * sa.step) * a_stride + sa.c, ra[2]);
            put_a((sa.r + 3u * sa.step) * a_stride + sa.c, ra[3]);
            put_a((sa.r + 4u * sa.step) * a_stride + sa.c, ra[4]);
            put_a((sa.r + 5u * sa.step) * a_stride + sa.c, ra[5]);
            put_a((sa.r + 6u * sa.step) * a_stride + sa.c, ra[6]);
            put_a((sa.r + 7u * sa.step) * a_stride + sa.c, ra[7]);
            put_b((sb.r + 0u * sb.step) * b_stride + sb.c, rb[0]);
            put_b((sb.r + 1u * sb.step) * b_stride + sb.c, rb[1]);
            put_b((sb.r + 2u * sb.step) * b_stride + sb.c, rb[2]);
            put_b((sb.r + 3u * sb.step) * b_stride + sb.c, rb[3]);
            put_b((sb.r + 4u * sb.step) * b_stride + sb.c, rb[4]);
            put_b((sb.r + 5u * sb.step) * b_stride + sb.c, rb[5]);
            put_b((sb.r + 6u * sb.step) * b_stride + sb.c, rb[6]);
            put_b((sb.r + 7u * sb.step) * b_stride + sb.c, rb[7]);
            workgroupBarrier();
        }
        if s < steps {
            let k0 = k_begin + s * BK;
            if fast && k0 + BK <= k_end {
                // The whole tile lies inside A and B, as vec4s: no checks. Rows as stored are
                // K long (A is [M, K]) or M long ([K, M]); N long (B is [K, N]) or K long ([N, K]).
                let lda = select(p.k, p.m, ta);
                let a_at = (a_base + (select(m0, k0, ta) + sa.r) * lda + select(k0, m0, ta) + sa.c) / 4u;
                let sta = sa.step * lda / 4u;
                ra[0] = a[a_at + 0u * sta];
                ra[1] = a[a_at + 1u * sta];
                ra[2] = a[a_at + 2u * sta];
                ra[3] = a[a_at + 3u * sta];
                ra[4] = a[a_at + 4u * sta];
                ra[5] = a[a_at + 5u * sta];
                ra[6] = a[a_at + 6u * sta];
                ra[7] = a[a_at + 7u * sta];
                let ldb = select(p.n, p.k, tb);
                let b_at = (b_base + (select(k0, n0, tb) + sb.r) * ldb + select(n0, k0, tb) + sb.c) / 4u;
                let st = sb.step * ldb / 4u;
                rb[0] = b[b_at + 0u * st];
                rb[1] = b[b_at + 1u * st];
                rb[2] = b[b_at + 2u * st];
                rb[3] = b[b_at + 3u * st];
                rb[4] = b[b_at + 4u * st];
                rb[5] = b[b_at + 5u * st];
                rb[6] = b[b_at + 6u * st];
                rb[7] = b[b_at + 7u * st];
            } else {
                if ta {
                    ra[0] = load_a(a_base, k0 + sa.r + 0u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[1] = load_a(a_base, k0 + sa.r + 1u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[2] = load_a(a_base, k0 + sa.r + 2u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[3] = load_a(a_base, k0 + sa.r + 3u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[4] = load_a(a_base, k0 + sa.r + 4u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[5] = load_a(a_base, k0 + sa.r + 5u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[6] = load_a(a_base, k0 + sa.r + 6u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                    ra[7] = load_a(a_base, k0 + sa.r + 7u * sa.step, m0 + sa.c, k_end, p.m, p.m);
                } else {
                    ra[0] = load_a(a_base, m0 + sa.r + 0u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[1] = load_a(a_base, m0 + sa.r + 1u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[2] = load_a(a_base, m0 + sa.r + 2u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[3] = load_a(a_base, m0 + sa.r + 3u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[4] = load_a(a_base, m0 + sa.r + 4u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[5] = load_a(a_base, m0 + sa.r + 5u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[6] = load_a(a_base, m0 + sa.r + 6u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                    ra[7] = load_a(a_base, m0 + sa.r + 7u * sa.step, k0 + sa.c, p.m, k_end, p.k);
                }
                if tb {
                    rb[0] = load_b(b_base, n0 + sb.r + 0u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[1] = load_b(b_base, n0 + sb.r + 1u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[2] = load_b(b_base, n0 + sb.r + 2u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[3] = load_b(b_base, n0 + sb.r + 3u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[4] = load_b(b_base, n0 + sb.r + 4u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[5] = load_b(b_base, n0 + sb.r + 5u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[6] = load_b(b_base, n0 + sb.r + 6u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                    rb[7] = load_b(b_base, n0 + sb.r + 7u * sb.step, k0 + sb.c, p.n, k_end, p.k);
                } else {
                    rb[0] = load_b(b_base, k0 + sb.r + 0u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[1] = load_b(b_base, k0 + sb.r + 1u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[2] = load_b(b_base, k0 + sb.r + 2u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[3] = load_b(b_base, k0 + sb.r + 3u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[4] = load_b(b_base, k0 + sb.r + 4u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[5] = load_b(b_base, k0 + sb.r + 5u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[6] = load_b(b_base, k0 + sb.r + 6u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                    rb[7] = load_b(b_base, k0 + sb.r + 7u * sb.step, n0 + sb.c, k_end, p.n, p.n);
                }
            }
        }
        if s == 0u {
            continue;
        }
        for (var kk = 0u; kk < BK; kk += 16u) {
            var a0: coop_mat16x16<f16, A>;
            var a1: coop_mat16x16<f16, A>;
            var a2: coop_mat16x16<f16, A>;
            var a3: coop_mat16x16<f16, A>;
            var b0: coop_mat16x16<f16, B>;
            var b1: coop_mat16x16<f16, B>;
            var b2: coop_mat16x16<f16, B>;
            var b3: coop_mat16x16<f16, B>;
            if ta { // As is [k][m]: column-major fragments
                let st = BM + PAD;
                a0 = coopLoad<coop_mat16x16<f16, A>>(&As[(kk * st + wm) / 4u], st / 4u);
                a1 = coopLoad<coop_mat16x16<f16, A>>(&As[(kk * st + wm + 16u) / 4u], st / 4u);
                a2 = coopLoad<coop_mat16x16<f16, A>>(&As[(kk * st + wm + 32u) / 4u], st / 4u);
                a3 = coopLoad<coop_mat16x16<f16, A>>(&As[(kk * st + wm + 48u) / 4u], st / 4u);
            } else { // As is [m][k]: row-major
                let st = BK + PAD;
                a0 = coopLoadT<coop_mat16x16<f16, A>>(&As[(wm * st + kk) / 4u], st / 4u);
                a1 = coopLoadT<coop_mat16x16<f16, A>>(&As[((wm + 16u) * st + kk) / 4u], st / 4u);
                a2 = coopLoadT<coop_mat16x16<f16, A>>(&As[((wm + 32u) * st + kk) / 4u], st / 4u);
                a3 = coopLoadT<coop_mat16x16<f16, A>>(&As[((wm + 48u) * st + kk) / 4u], st / 4u);
            }
            if tb { // Bs is [n][k]: column-major
                let st = BK + PAD;
                b0 = coopLoad<coop_mat16x16<f16, B>>(&Bs[(wn * st + kk) / 4u], st / 4u);
                b1 = coopLoad<coop_mat16x16<f16, B>>(&Bs[((wn + 16u) * st + kk) / 4u], st / 4u);
                b2 = coopLoad<coop_mat16x16<f16, B>>(&Bs[((wn + 32u) * st + kk) / 4u], st / 4u);
                b3 = coopLoad<coop_mat16x16<f16, B>>(&Bs[((wn + 48u) * st + kk) / 4u], st / 4u);
            } else { // Bs is [k][n]: row-major
                let st = BN + PAD;
                b0 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[(kk * st + wn) / 4u], st / 4u);
                b1 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[(kk * st + wn + 16u) / 4u], st / 4u);
                b2 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[(kk * st + wn + 32u) / 4u], st / 4u);
                b3 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[(kk * st + wn + 48u) / 4u], st / 4u);
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
    }

    if inside {
        store_inside(c00, at);
        store_inside(c01, at + 16u);
        store_inside(c02, at + 32u);
        store_inside(c03, at + 48u);
        store_inside(c10, at + r);
        store_inside(c11, at + r + 16u);
        store_inside(c12, at + r + 32u);
        store_inside(c13, at + r + 48u);
        store_inside(c20, at + 2u * r);
        store_inside(c21, at + 2u * r + 16u);
        store_inside(c22, at + 2u * r + 32u);
        store_inside(c23, at + 2u * r + 48u);
        store_inside(c30, at + 3u * r);
        store_inside(c31, at + 3u * r + 16u);
        store_inside(c32, at + 3u * r + 32u);
        store_inside(c33, at + 3u * r + 48u);
        return;
    }
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
