// Batched C = op(A) · op(B), op = optional transpose: one entry point per combination.
// Register-blocked SGEMM: a 128×128 tile of C per workgroup of 128 threads, each thread 16×8
// outputs in 32 vec4 accumulators, K in steps of 8. Accumulator cRR_j holds row 4·ty + 32·(RR / 4)
// + RR % 4, columns 4·tx + 64·j .. +3 (ty = li / 16, tx = li % 16).
// Both tiles sit k-major in shared memory (As[k][m], Bs[k][n]) so the inner loop reads vec4s;
// rows are padded to 132 floats so the transposing stores hit distinct banks.
// Interior tiles load and store without per-element checks; edge tiles and K's last partial
// step zero-fill what lies outside the matrices. wgpu's bounds checks stay on: their clamps of the
// shared-memory indices are loop-invariant or constant after unrolling.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32,
    b_off: u32,
    a_bs: u32, // batch strides in elements (0 = shared across the batch)
    b_bs: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// [BK][128 / 4 + 1]: indexed [k][vec4 of m or n], the first index a constant after unrolling and
// the second loop-invariant, so the index checks leave the inner loop.
var<workgroup> As: array<array<vec4<f32>, 33>, 8>;
var<workgroup> Bs: array<array<vec4<f32>, 33>, 8>;

// Tile element i (0..7) of thread li as (m or n, k). Consecutive threads walk the dimension that
// is contiguous in memory, so the global reads coalesce.
fn slot(li: u32, i: u32, k_contiguous: bool) -> vec2<u32> {
    if k_contiguous {
        return vec2<u32>(li / BK + 16u * i, li % BK);
    }
    return vec2<u32>(li, i);
}

// op(A)[m0 + mm, k0 + kk] for tile elements i0..i0+3; zero outside A when `check`.
fn load_a(base: u32, m0: u32, k0: u32, li: u32, i0: u32, ta: bool, check: bool) -> vec4<f32> {
    var v = vec4<f32>();
    for (var i = 0u; i < 4u; i++) {
        let s = slot(li, i0 + i, !ta);
        let m = m0 + s.x;
        let k = k0 + s.y;
        if !check || (m < p.m && k < p.k) {
            var at = base + m * p.k + k;
            if ta {
                at = base + k * p.m + m;
            }
            v[i] = a[at];
        }
    }
    return v;
}

// op(B)[k0 + kk, n0 + nn] for tile elements i0..i0+3; zero outside B when `check`.
fn load_b(base: u32, n0: u32, k0: u32, li: u32, i0: u32, tb: bool, check: bool) -> vec4<f32> {
    var v = vec4<f32>();
    for (var i = 0u; i < 4u; i++) {
        let s = slot(li, i0 + i, tb);
        let n = n0 + s.x;
        let k = k0 + s.y;
        if !check || (n < p.n && k < p.k) {
            var at = base + k * p.n + n;
            if tb {
                at = base + n * p.k + k;
            }
            v[i] = b[at];
        }
    }
    return v;
}

fn store_a(li: u32, i0: u32, v: vec4<f32>, ta: bool) {
    for (var i = 0u; i < 4u; i++) {
        let s = slot(li, i0 + i, !ta);
        As[s.y][s.x / 4u][s.x % 4u] = v[i];
    }
}

fn store_b(li: u32, i0: u32, v: vec4<f32>, tb: bool) {
    for (var i = 0u; i < 4u; i++) {
        let s = slot(li, i0 + i, tb);
        Bs[s.y][s.x / 4u][s.x % 4u] = v[i];
    }
}

// Row `row` of C: columns col..col+3 from v0 and col+64..col+67 from v1.
fn store_row(base: u32, row: u32, col: u32, v0: vec4<f32>, v1: vec4<f32>, inside: bool) {
    let at = base + row * p.n + col;
    for (var q = 0u; q < 4u; q++) {
        if inside || (row < p.m && col + q < p.n) {
            c[at + q] = v0[q];
        }
        if inside || (row < p.m && col + 64u + q < p.n) {
            c[at + 64u + q] = v1[q];
        }
    }
}

fn gemm(wid: vec3<u32>, li: u32, ta: bool, tb: bool) {
    let tx = li % 16u;
    let ty = li / 16u;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let a_base = p.a_off + wid.z * p.a_bs;
    let b_base = p.b_off + wid.z * p.b_bs;
    // All of this workgroup's 128×128 outputs lie inside C (uniform across the workgroup).
    let inside = m0 + BM <= p.m && n0 + BN <= p.n;
    let steps = (p.k + BK - 1u) / BK;
    let full_steps = p.k / BK;

    // The next step's tiles wait in registers while this step computes.
    let check0 = !inside || full_steps == 0u;
    var ra0 = load_a(a_base, m0, 0u, li, 0u, ta, check0);
    var ra1 = load_a(a_base, m0, 0u, li, 4u, ta, check0);
    var rb0 = load_b(b_base, n0, 0u, li, 0u, tb, check0);
    var rb1 = load_b(b_base, n0, 0u, li, 4u, tb, check0);

    var c00_0 = vec4<f32>(); var c00_1 = vec4<f32>();
    var c01_0 = vec4<f32>(); var c01_1 = vec4<f32>();
    var c02_0 = vec4<f32>(); var c02_1 = vec4<f32>();
    var c03_0 = vec4<f32>(); var c03_1 = vec4<f32>();
    var c04_0 = vec4<f32>(); var c04_1 = vec4<f32>();
    var c05_0 = vec4<f32>(); var c05_1 = vec4<f32>();
    var c06_0 = vec4<f32>(); var c06_1 = vec4<f32>();
    var c07_0 = vec4<f32>(); var c07_1 = vec4<f32>();
    var c08_0 = vec4<f32>(); var c08_1 = vec4<f32>();
    var c09_0 = vec4<f32>(); var c09_1 = vec4<f32>();
    var c10_0 = vec4<f32>(); var c10_1 = vec4<f32>();
    var c11_0 = vec4<f32>(); var c11_1 = vec4<f32>();
    var c12_0 = vec4<f32>(); var c12_1 = vec4<f32>();
    var c13_0 = vec4<f32>(); var c13_1 = vec4<f32>();
    var c14_0 = vec4<f32>(); var c14_1 = vec4<f32>();
    var c15_0 = vec4<f32>(); var c15_1 = vec4<f32>();
    for (var s = 0u; s < steps; s++) {
        workgroupBarrier(); // the previous step's reads are done
        store_a(li, 0u, ra0, ta);
        store_a(li, 4u, ra1, ta);
        store_b(li, 0u, rb0, tb);
        store_b(li, 4u, rb1, tb);
        workgroupBarrier();
        if s + 1u < steps {
            let k0 = (s + 1u) * BK;
            let check = !inside || s + 1u >= full_steps;
            ra0 = load_a(a_base, m0, k0, li, 0u, ta, check);
            ra1 = load_a(a_base, m0, k0, li, 4u, ta, check);
            rb0 = load_b(b_base, n0, k0, li, 0u, tb, check);
            rb1 = load_b(b_base, n0, k0, li, 4u, tb, check);
        }
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = As[kk][ty];
            let a1 = As[kk][ty + 8u];
            let a2 = As[kk][ty + 16u];
            let a3 = As[kk][ty + 24u];
            let b0 = Bs[kk][tx];
            let b1 = Bs[kk][tx + 16u];
            c00_0 += a0.x * b0;
            c00_1 += a0.x * b1;
            c01_0 += a0.y * b0;
            c01_1 += a0.y * b1;
            c02_0 += a0.z * b0;
            c02_1 += a0.z * b1;
            c03_0 += a0.w * b0;
            c03_1 += a0.w * b1;
            c04_0 += a1.x * b0;
            c04_1 += a1.x * b1;
            c05_0 += a1.y * b0;
            c05_1 += a1.y * b1;
            c06_0 += a1.z * b0;
            c06_1 += a1.z * b1;
            c07_0 += a1.w * b0;
            c07_1 += a1.w * b1;
            c08_0 += a2.x * b0;
            c08_1 += a2.x * b1;
            c09_0 += a2.y * b0;
            c09_1 += a2.y * b1;
            c10_0 += a2.z * b0;
            c10_1 += a2.z * b1;
            c11_0 += a2.w * b0;
            c11_1 += a2.w * b1;
            c12_0 += a3.x * b0;
            c12_1 += a3.x * b1;
            c13_0 += a3.y * b0;
            c13_1 += a3.y * b1;
            c14_0 += a3.z * b0;
            c14_1 += a3.z * b1;
            c15_0 += a3.w * b0;
            c15_1 += a3.w * b1;
        }
    }

    let c_base = wid.z * p.m * p.n;
    let row0 = m0 + 4u * ty;
    let col0 = n0 + 4u * tx;
    store_row(c_base, row0 + 0u, col0, c00_0, c00_1, inside);
    store_row(c_base, row0 + 1u, col0, c01_0, c01_1, inside);
    store_row(c_base, row0 + 2u, col0, c02_0, c02_1, inside);
    store_row(c_base, row0 + 3u, col0, c03_0, c03_1, inside);
    store_row(c_base, row0 + 32u, col0, c04_0, c04_1, inside);
    store_row(c_base, row0 + 33u, col0, c05_0, c05_1, inside);
    store_row(c_base, row0 + 34u, col0, c06_0, c06_1, inside);
    store_row(c_base, row0 + 35u, col0, c07_0, c07_1, inside);
    store_row(c_base, row0 + 64u, col0, c08_0, c08_1, inside);
    store_row(c_base, row0 + 65u, col0, c09_0, c09_1, inside);
    store_row(c_base, row0 + 66u, col0, c10_0, c10_1, inside);
    store_row(c_base, row0 + 67u, col0, c11_0, c11_1, inside);
    store_row(c_base, row0 + 96u, col0, c12_0, c12_1, inside);
    store_row(c_base, row0 + 97u, col0, c13_0, c13_1, inside);
    store_row(c_base, row0 + 98u, col0, c14_0, c14_1, inside);
    store_row(c_base, row0 + 99u, col0, c15_0, c15_1, inside);
}

@compute @workgroup_size(128)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    gemm(wid, li, false, false);
}

@compute @workgroup_size(128)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    gemm(wid, li, true, false);
}

@compute @workgroup_size(128)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    gemm(wid, li, false, true);
}

@compute @workgroup_size(128)
fn matmul_tt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    gemm(wid, li, true, true);
}
