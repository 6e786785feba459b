// Batched C = op(A) · op(B), op = optional transpose: one entry point per combination.
// Register-blocked SGEMM: a 128×128 tile of C per workgroup of 128 threads, each thread 16×8
// outputs, K in steps of 8. Both tiles sit k-major in shared memory, double-buffered (one barrier
// a step: the next step's tiles are loaded into registers while this one's are multiplied).
// The k loop is written out (`fma_k(buf, 0u)` .. `fma_k(buf, 7u)`, accumulators in
// `var<private>`): a WGSL loop gets wgpu's loop bounding when bounds checks are on, which kept
// the driver from unrolling it (measurements: docs/PERFORMANCE.md). Load offsets are computed
// once per workgroup.
// When the matrices' rows and offsets are multiples of 4 floats (`p.aligned`), every global read
// and write is a vec4; otherwise the same kernel reads and writes scalars.
// Split-K: split s multiplies K range [s·ks, s·ks + ks) into its own slice of C, [splits, batch,
// M, N], which the caller then sums (`sum_rows`): small outputs with a long K (weight gradients)
// would otherwise keep most of the GPU idle.
const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// k-major tiles As[k][m / 4], Bs[k][n / 4], each row padded by one vec4 so the transposing
// scalar stores of a K-contiguous operand hit distinct banks.
// Two of each: [buffer][k][m / 4].
var<workgroup> As: array<array<array<vec4<f32>, 33>, 8>, 2>;
var<workgroup> Bs: array<array<array<vec4<f32>, 33>, 8>, 2>;

// cRR_J: row 4·ty + 32·(RR / 4) + RR % 4 of the tile, columns 4·tx + 64·J .. +3.
var<private> c00_0: vec4<f32>; var<private> c00_1: vec4<f32>;
var<private> c01_0: vec4<f32>; var<private> c01_1: vec4<f32>;
var<private> c02_0: vec4<f32>; var<private> c02_1: vec4<f32>;
var<private> c03_0: vec4<f32>; var<private> c03_1: vec4<f32>;
var<private> c04_0: vec4<f32>; var<private> c04_1: vec4<f32>;
var<private> c05_0: vec4<f32>; var<private> c05_1: vec4<f32>;
var<private> c06_0: vec4<f32>; var<private> c06_1: vec4<f32>;
var<private> c07_0: vec4<f32>; var<private> c07_1: vec4<f32>;
var<private> c08_0: vec4<f32>; var<private> c08_1: vec4<f32>;
var<private> c09_0: vec4<f32>; var<private> c09_1: vec4<f32>;
var<private> c10_0: vec4<f32>; var<private> c10_1: vec4<f32>;
var<private> c11_0: vec4<f32>; var<private> c11_1: vec4<f32>;
var<private> c12_0: vec4<f32>; var<private> c12_1: vec4<f32>;
var<private> c13_0: vec4<f32>; var<private> c13_1: vec4<f32>;
var<private> c14_0: vec4<f32>; var<private> c14_1: vec4<f32>;
var<private> c15_0: vec4<f32>; var<private> c15_1: vec4<f32>;

// Tile stores. A K-contiguous load (kc) of row r, k..k+3 is transposed into 4 scalar stores;
// otherwise a load of K row k, columns 4·q..4·q+3, is one vec4 store.
fn store_a(buf: u32, v: vec4<f32>, kc: bool, k: u32, r: u32) {
    if kc {
        As[buf][k][r / 4u][r % 4u] = v.x;
        As[buf][k + 1u][r / 4u][r % 4u] = v.y;
        As[buf][k + 2u][r / 4u][r % 4u] = v.z;
        As[buf][k + 3u][r / 4u][r % 4u] = v.w;
    } else {
        As[buf][k][r / 4u] = v;
    }
}

fn store_b(buf: u32, v: vec4<f32>, kc: bool, k: u32, r: u32) {
    if kc {
        Bs[buf][k][r / 4u][r % 4u] = v.x;
        Bs[buf][k + 1u][r / 4u][r % 4u] = v.y;
        Bs[buf][k + 2u][r / 4u][r % 4u] = v.z;
        Bs[buf][k + 3u][r / 4u][r % 4u] = v.w;
    } else {
        Bs[buf][k][r / 4u] = v;
    }
}

// One k of buffer buf: 4 + 2 vec4 reads, 128 FMAs. Called with constant kk.
fn fma_k(buf: u32, kk: u32, ty: u32, tx: u32) {
    let a0 = As[buf][kk][ty];
    let a1 = As[buf][kk][ty + 8u];
    let a2 = As[buf][kk][ty + 16u];
    let a3 = As[buf][kk][ty + 24u];
    let b0 = Bs[buf][kk][tx];
    let b1 = Bs[buf][kk][tx + 16u];
    c00_0 += a0.x * b0; c00_1 += a0.x * b1;
    c01_0 += a0.y * b0; c01_1 += a0.y * b1;
    c02_0 += a0.z * b0; c02_1 += a0.z * b1;
    c03_0 += a0.w * b0; c03_1 += a0.w * b1;
    c04_0 += a1.x * b0; c04_1 += a1.x * b1;
    c05_0 += a1.y * b0; c05_1 += a1.y * b1;
    c06_0 += a1.z * b0; c06_1 += a1.z * b1;
    c07_0 += a1.w * b0; c07_1 += a1.w * b1;
    c08_0 += a2.x * b0; c08_1 += a2.x * b1;
    c09_0 += a2.y * b0; c09_1 += a2.y * b1;
    c10_0 += a2.z * b0; c10_1 += a2.z * b1;
    c11_0 += a2.w * b0; c11_1 += a2.w * b1;
    c12_0 += a3.x * b0; c12_1 += a3.x * b1;
    c13_0 += a3.y * b0; c13_1 += a3.y * b1;
    c14_0 += a3.z * b0; c14_1 += a3.z * b1;
    c15_0 += a3.w * b0; c15_1 += a3.w * b1;
}

// Row `row` of C: columns col..col+3 from v0 and col+64..col+67 from v1.
fn store_row(base: u32, row: u32, col: u32, v0: vec4<f32>, v1: vec4<f32>) {
    let at = base + row * p.n + col;
    write_c(at, row, col, v0);
    write_c(at + 64u, row, col + 64u, v1);
}

fn gemm(wid: vec3<u32>, nz: u32, li: u32, ta: bool, tb: bool) {
    let tx = li % 16u;
    let ty = li / 16u;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    // Workgroup z = split · products + product; each writes its own [M, N] slice of C.
    let products = nz / p.splits;
    let batch = wid.z % products;
    let a_base = p.a_off + batch * p.a_bs;
    let b_base = p.b_off + batch * p.b_bs;
    let k_begin = (wid.z / products) * p.ks;
    let k_end = max(k_begin, min(p.k, k_begin + p.ks));
    // All of this workgroup's outputs lie inside C (uniform across the workgroup).
    let inside = m0 + BM <= p.m && n0 + BN <= p.n;
    let steps = (k_end - k_begin + BK - 1u) / BK;
    let full_steps = (k_end - k_begin) / BK;

    // This thread's loads, as (k, row or column) inside the tile, and their element offsets.
    // 2 vec4s of each a step. [M, K] (or [N, K]): row li / 2 (+64), k 4·(li % 2); [K, M] (or
    // [K, N]): k li / 32 (+4), rows 4·(li % 32)..
    let a_kc = !ta;
    let ak = select(li / 32u, 4u * (li % 2u), a_kc);
    let am = select(4u * (li % 32u), li / 2u, a_kc);
    var a_at = a_base + select((k_begin + ak) * p.m + m0 + am, (m0 + am) * p.k + k_begin + ak, a_kc);
    let a_step = select(BK * p.m, BK, a_kc);
    let ak1 = ak + select(4u, 0u, a_kc); // the second load
    let am1 = am + select(0u, 64u, a_kc);
    let a_at1 = select(4u * p.m, 64u * p.k, a_kc);
    let b_kc = tb;
    let bk = select(li / 32u, 4u * (li % 2u), b_kc);
    let bn = select(4u * (li % 32u), li / 2u, b_kc);
    var b_at = b_base + select((k_begin + bk) * p.n + n0 + bn, (n0 + bn) * p.k + k_begin + bk, b_kc);
    let b_step = select(BK * p.n, BK, b_kc);
    let bk1 = bk + select(4u, 0u, b_kc);
    let bn1 = bn + select(0u, 64u, b_kc);
    let b_at1 = select(4u * p.n, 64u * p.k, b_kc);

    // The next step's tiles wait in registers while this step computes.
    var k0 = k_begin;
    var check = !inside || full_steps == 0u;
    var ra0 = read_a(a_at, select(4u, count(a_kc, k0 + ak, k_end, m0 + am, p.m), check));
    var ra1 = read_a(a_at + a_at1, select(4u, count(a_kc, k0 + ak1, k_end, m0 + am1, p.m), check));
    var rb0 = read_b(b_at, select(4u, count(b_kc, k0 + bk, k_end, n0 + bn, p.n), check));
    var rb1 = read_b(b_at + b_at1, select(4u, count(b_kc, k0 + bk1, k_end, n0 + bn1, p.n), check));

    store_a(0u, ra0, a_kc, ak, am);
    store_a(0u, ra1, a_kc, ak1, am1);
    store_b(0u, rb0, b_kc, bk, bn);
    store_b(0u, rb1, b_kc, bk1, bn1);
    workgroupBarrier();
    for (var s = 0u; s < steps; s++) {
        let buf = s % 2u;
        let more = s + 1u < steps;
        if more {
            k0 += BK;
            a_at += a_step;
            b_at += b_step;
            check = !inside || s + 1u >= full_steps;
            ra0 = read_a(a_at, select(4u, count(a_kc, k0 + ak, k_end, m0 + am, p.m), check));
            ra1 = read_a(a_at + a_at1, select(4u, count(a_kc, k0 + ak1, k_end, m0 + am1, p.m), check));
            rb0 = read_b(b_at, select(4u, count(b_kc, k0 + bk, k_end, n0 + bn, p.n), check));
            rb1 = read_b(b_at + b_at1, select(4u, count(b_kc, k0 + bk1, k_end, n0 + bn1, p.n), check));
        }
        fma_k(buf, 0u, ty, tx);
        fma_k(buf, 1u, ty, tx);
        fma_k(buf, 2u, ty, tx);
        fma_k(buf, 3u, ty, tx);
        fma_k(buf, 4u, ty, tx);
        fma_k(buf, 5u, ty, tx);
        fma_k(buf, 6u, ty, tx);
        fma_k(buf, 7u, ty, tx);
        // The other buffer was last read in step s - 1, before the previous barrier.
        if more {
            store_a(1u - buf, ra0, a_kc, ak, am);
            store_a(1u - buf, ra1, a_kc, ak1, am1);
            store_b(1u - buf, rb0, b_kc, bk, bn);
            store_b(1u - buf, rb1, b_kc, bk1, bn1);
        }
        workgroupBarrier();
    }

    let c_base = p.c_off + wid.z * p.m * p.n;
    let row0 = m0 + 4u * ty;
    let col0 = n0 + 4u * tx;
    store_row(c_base, row0 + 0u, col0, c00_0, c00_1);
    store_row(c_base, row0 + 1u, col0, c01_0, c01_1);
    store_row(c_base, row0 + 2u, col0, c02_0, c02_1);
    store_row(c_base, row0 + 3u, col0, c03_0, c03_1);
    store_row(c_base, row0 + 32u, col0, c04_0, c04_1);
    store_row(c_base, row0 + 33u, col0, c05_0, c05_1);
    store_row(c_base, row0 + 34u, col0, c06_0, c06_1);
    store_row(c_base, row0 + 35u, col0, c07_0, c07_1);
    store_row(c_base, row0 + 64u, col0, c08_0, c08_1);
    store_row(c_base, row0 + 65u, col0, c09_0, c09_1);
    store_row(c_base, row0 + 66u, col0, c10_0, c10_1);
    store_row(c_base, row0 + 67u, col0, c11_0, c11_1);
    store_row(c_base, row0 + 96u, col0, c12_0, c12_1);
    store_row(c_base, row0 + 97u, col0, c13_0, c13_1);
    store_row(c_base, row0 + 98u, col0, c14_0, c14_1);
    store_row(c_base, row0 + 99u, col0, c15_0, c15_1);
}

@compute @workgroup_size(128)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, false, false);
}

@compute @workgroup_size(128)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, true, false);
}

@compute @workgroup_size(128)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, false, true);
}

@compute @workgroup_size(128)
fn matmul_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, true, true);
}
