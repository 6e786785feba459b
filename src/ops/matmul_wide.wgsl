// The wide SGEMM for A not transposed (matmul_nn, matmul_nt; matmul.rs picks it when there is no
// K split): same Params, bindings, entry points and results as matmul.wgsl, with a 128×256 tile
// of C per workgroup of 256 threads, 8×16 outputs per thread, and K in steps of 16 (one shared
// buffer, two barriers a step, the next step's tiles prefetched into registers; the k loop written
// out as `fma_k(0u)` .. `fma_k(15u)`, see matmul.wgsl). It is the faster of the two where A is
// untransposed; on transposed-A shapes (weight gradients) it was slower, so those stay with
// matmul.wgsl (measurements: docs/PERFORMANCE.md).
// A split's K range (a multiple of 8) may end in a half step, which takes the checked loads.
const BM: u32 = 128u;
const BN: u32 = 256u;
const BK: u32 = 16u;
const NT: u32 = 256u; // threads a workgroup: one per 8×16 outputs of the tile

// k-major tiles As[k][m / 4], Bs[k][n / 4], each row padded by one vec4 so the transposing
// scalar stores of a K-contiguous operand hit distinct banks.
var<workgroup> As: array<array<vec4<f32>, 33>, 16>;
var<workgroup> Bs: array<array<vec4<f32>, 65>, 16>;

// cR_J: row 4·ty + 64·(R / 4) + R % 4 of the tile, columns 4·tx + 64·J .. +3.
var<private> c0_0: vec4<f32>; var<private> c0_1: vec4<f32>; var<private> c0_2: vec4<f32>; var<private> c0_3: vec4<f32>;
var<private> c1_0: vec4<f32>; var<private> c1_1: vec4<f32>; var<private> c1_2: vec4<f32>; var<private> c1_3: vec4<f32>;
var<private> c2_0: vec4<f32>; var<private> c2_1: vec4<f32>; var<private> c2_2: vec4<f32>; var<private> c2_3: vec4<f32>;
var<private> c3_0: vec4<f32>; var<private> c3_1: vec4<f32>; var<private> c3_2: vec4<f32>; var<private> c3_3: vec4<f32>;
var<private> c4_0: vec4<f32>; var<private> c4_1: vec4<f32>; var<private> c4_2: vec4<f32>; var<private> c4_3: vec4<f32>;
var<private> c5_0: vec4<f32>; var<private> c5_1: vec4<f32>; var<private> c5_2: vec4<f32>; var<private> c5_3: vec4<f32>;
var<private> c6_0: vec4<f32>; var<private> c6_1: vec4<f32>; var<private> c6_2: vec4<f32>; var<private> c6_3: vec4<f32>;
var<private> c7_0: vec4<f32>; var<private> c7_1: vec4<f32>; var<private> c7_2: vec4<f32>; var<private> c7_3: vec4<f32>;

// Tile stores. A K-contiguous load (kc) of row r, k..k+3 is transposed into 4 scalar stores;
// otherwise a load of K row k, columns 4·q..4·q+3, is one vec4 store.
fn store_a(v: vec4<f32>, kc: bool, k: u32, r: u32) {
    if kc {
        As[k][r / 4u][r % 4u] = v.x;
        As[k + 1u][r / 4u][r % 4u] = v.y;
        As[k + 2u][r / 4u][r % 4u] = v.z;
        As[k + 3u][r / 4u][r % 4u] = v.w;
    } else {
        As[k][r / 4u] = v;
    }
}

fn store_b(v: vec4<f32>, kc: bool, k: u32, r: u32) {
    if kc {
        Bs[k][r / 4u][r % 4u] = v.x;
        Bs[k + 1u][r / 4u][r % 4u] = v.y;
        Bs[k + 2u][r / 4u][r % 4u] = v.z;
        Bs[k + 3u][r / 4u][r % 4u] = v.w;
    } else {
        Bs[k][r / 4u] = v;
    }
}

// One k of the tile: 2 + 4 vec4 reads, 128 FMAs. Called with constant kk.
fn fma_k(kk: u32, ty: u32, tx: u32) {
    let a0 = As[kk][ty];
    let a1 = As[kk][ty + 16u];
    let b0 = Bs[kk][tx];
    let b1 = Bs[kk][tx + 16u];
    let b2 = Bs[kk][tx + 32u];
    let b3 = Bs[kk][tx + 48u];
    c0_0 += a0.x * b0; c0_1 += a0.x * b1; c0_2 += a0.x * b2; c0_3 += a0.x * b3;
    c1_0 += a0.y * b0; c1_1 += a0.y * b1; c1_2 += a0.y * b2; c1_3 += a0.y * b3;
    c2_0 += a0.z * b0; c2_1 += a0.z * b1; c2_2 += a0.z * b2; c2_3 += a0.z * b3;
    c3_0 += a0.w * b0; c3_1 += a0.w * b1; c3_2 += a0.w * b2; c3_3 += a0.w * b3;
    c4_0 += a1.x * b0; c4_1 += a1.x * b1; c4_2 += a1.x * b2; c4_3 += a1.x * b3;
    c5_0 += a1.y * b0; c5_1 += a1.y * b1; c5_2 += a1.y * b2; c5_3 += a1.y * b3;
    c6_0 += a1.z * b0; c6_1 += a1.z * b1; c6_2 += a1.z * b2; c6_3 += a1.z * b3;
    c7_0 += a1.w * b0; c7_1 += a1.w * b1; c7_2 += a1.w * b2; c7_3 += a1.w * b3;
}

// Row `row` of C: columns col + 64·J .. +3 from vJ.
fn store_row(base: u32, row: u32, col: u32, v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) {
    let at = base + row * p.n + col;
    write_c(at, row, col, v0);
    write_c(at + 64u, row, col + 64u, v1);
    write_c(at + 128u, row, col + 128u, v2);
    write_c(at + 192u, row, col + 192u, v3);
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
    // A: 2 vec4s a step. [M, K]: row li / 4 (+64), k 4·(li % 4); [K, M]: k li / 32 (+8), rows 4·(li % 32)..
    let a_kc = !ta;
    let ak = select(li / 32u, 4u * (li % 4u), a_kc);
    let am = select(4u * (li % 32u), li / 4u, a_kc);
    var a_at = a_base + select((k_begin + ak) * p.m + m0 + am, (m0 + am) * p.k + k_begin + ak, a_kc);
    let a_step = select(BK * p.m, BK, a_kc);
    let ak1 = ak + select(8u, 0u, a_kc); // the second load
    let am1 = am + select(0u, 64u, a_kc);
    let a_at1 = select(8u * p.m, 64u * p.k, a_kc);
    // B: 4 vec4s a step (i = 0..3). [N, K]: column li / 4 + 64·i, k 4·(li % 4); [K, N]:
    // k li / 64 + 4·i, columns 4·(li % 64)..
    let b_kc = tb;
    let bk = select(li / 64u, 4u * (li % 4u), b_kc);
    let bn = select(4u * (li % 64u), li / 4u, b_kc);
    var b_at = b_base + select((k_begin + bk) * p.n + n0 + bn, (n0 + bn) * p.k + k_begin + bk, b_kc);
    let b_step = select(BK * p.n, BK, b_kc);
    let dbk = select(4u, 0u, b_kc); // from one load to the next
    let dbn = select(0u, 64u, b_kc);
    let db_at = select(4u * p.n, 64u * p.k, b_kc);

    // The next step's tiles wait in registers while this step computes.
    var k0 = k_begin;
    var check = !inside || full_steps == 0u;
    var ra0 = read_a(a_at, select(4u, count(a_kc, k0 + ak, k_end, m0 + am, p.m), check));
    var ra1 = read_a(a_at + a_at1, select(4u, count(a_kc, k0 + ak1, k_end, m0 + am1, p.m), check));
    var rb0 = read_b(b_at, select(4u, count(b_kc, k0 + bk, k_end, n0 + bn, p.n), check));
    var rb1 = read_b(b_at + db_at, select(4u, count(b_kc, k0 + bk + dbk, k_end, n0 + bn + dbn, p.n), check));
    var rb2 = read_b(b_at + 2u * db_at, select(4u, count(b_kc, k0 + bk + 2u * dbk, k_end, n0 + bn + 2u * dbn, p.n), check));
    var rb3 = read_b(b_at + 3u * db_at, select(4u, count(b_kc, k0 + bk + 3u * dbk, k_end, n0 + bn + 3u * dbn, p.n), check));

    for (var s = 0u; s < steps; s++) {
        workgroupBarrier(); // the previous step's reads are done
        store_a(ra0, a_kc, ak, am);
        store_a(ra1, a_kc, ak1, am1);
        store_b(rb0, b_kc, bk, bn);
        store_b(rb1, b_kc, bk + dbk, bn + dbn);
        store_b(rb2, b_kc, bk + 2u * dbk, bn + 2u * dbn);
        store_b(rb3, b_kc, bk + 3u * dbk, bn + 3u * dbn);
        workgroupBarrier();
        if s + 1u < steps {
            k0 += BK;
            a_at += a_step;
            b_at += b_step;
            check = !inside || s + 1u >= full_steps;
            ra0 = read_a(a_at, select(4u, count(a_kc, k0 + ak, k_end, m0 + am, p.m), check));
            ra1 = read_a(a_at + a_at1, select(4u, count(a_kc, k0 + ak1, k_end, m0 + am1, p.m), check));
            rb0 = read_b(b_at, select(4u, count(b_kc, k0 + bk, k_end, n0 + bn, p.n), check));
            rb1 = read_b(b_at + db_at, select(4u, count(b_kc, k0 + bk + dbk, k_end, n0 + bn + dbn, p.n), check));
            rb2 = read_b(b_at + 2u * db_at, select(4u, count(b_kc, k0 + bk + 2u * dbk, k_end, n0 + bn + 2u * dbn, p.n), check));
            rb3 = read_b(b_at + 3u * db_at, select(4u, count(b_kc, k0 + bk + 3u * dbk, k_end, n0 + bn + 3u * dbn, p.n), check));
        }
        fma_k(0u, ty, tx);
        fma_k(1u, ty, tx);
        fma_k(2u, ty, tx);
        fma_k(3u, ty, tx);
        fma_k(4u, ty, tx);
        fma_k(5u, ty, tx);
        fma_k(6u, ty, tx);
        fma_k(7u, ty, tx);
        fma_k(8u, ty, tx);
        fma_k(9u, ty, tx);
        fma_k(10u, ty, tx);
        fma_k(11u, ty, tx);
        fma_k(12u, ty, tx);
        fma_k(13u, ty, tx);
        fma_k(14u, ty, tx);
        fma_k(15u, ty, tx);
    }

    let c_base = p.c_off + wid.z * p.m * p.n;
    let row0 = m0 + 4u * ty;
    let col0 = n0 + 4u * tx;
    store_row(c_base, row0 + 0u, col0, c0_0, c0_1, c0_2, c0_3);
    store_row(c_base, row0 + 1u, col0, c1_0, c1_1, c1_2, c1_3);
    store_row(c_base, row0 + 2u, col0, c2_0, c2_1, c2_2, c2_3);
    store_row(c_base, row0 + 3u, col0, c3_0, c3_1, c3_2, c3_3);
    store_row(c_base, row0 + 64u, col0, c4_0, c4_1, c4_2, c4_3);
    store_row(c_base, row0 + 65u, col0, c5_0, c5_1, c5_2, c5_3);
    store_row(c_base, row0 + 66u, col0, c6_0, c6_1, c6_2, c6_3);
    store_row(c_base, row0 + 67u, col0, c7_0, c7_1, c7_2, c7_3);
}

@compute @workgroup_size(NT)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, false, false);
}

@compute @workgroup_size(NT)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, true, false);
}

@compute @workgroup_size(NT)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, false, true);
}

@compute @workgroup_size(NT)
fn matmul_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    gemm(wid, nwg.z, li, true, true);
}
