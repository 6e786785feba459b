// What the SGEMMs (matmul.wgsl, matmul_wide.wgsl) share, prepended to each: the parameters,
// bindings, and the checked and vec4 reads and writes of A, B and C.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_off: u32, // element offsets
    b_off: u32,
    a_bs: u32, // batch strides in elements (0 = shared across the batch)
    b_bs: u32,
    ta: u32, // A is stored [K, M]: read by matmul_coop.wgsl only (here the entry point says it),
    tb: u32, // B is stored [N, K]: kept so every matmul kernel shares one Params (MatmulParams)
    aligned: u32,
    splits: u32,
    ks: u32, // K per split, a multiple of 8
    c_off: u32, // element offset of C, a multiple of 4 (the host writes into C directly only then)
    acc: u32,   // 1: C += the product, else C = it
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

// How many of the 4 contiguous elements of a load lie inside the matrix. `kc`: they run along K
// from k, in row mn; else along M (or N) from mn, in K row k.
fn count(kc: bool, k: u32, k_end: u32, mn: u32, mn_size: u32) -> u32 {
    if kc {
        return select(0u, min(k_end - min(k, k_end), 4u), mn < mn_size);
    }
    return select(0u, min(mn_size - min(mn, mn_size), 4u), k < k_end);
}

fn elem_a(i: u32) -> f32 {
    return a[i / 4u][i % 4u];
}

fn elem_b(i: u32) -> f32 {
    return b[i / 4u][i % 4u];
}

// Elements at..at+3 of A (or B), the first n of them (the rest read as zero). When aligned, n is 0 or 4.
fn read_a(at: u32, n: u32) -> vec4<f32> {
    var v = vec4<f32>();
    if p.aligned == 1u {
        if n != 0u {
            v = a[at / 4u];
        }
        return v;
    }
    if n > 0u { v.x = elem_a(at); }
    if n > 1u { v.y = elem_a(at + 1u); }
    if n > 2u { v.z = elem_a(at + 2u); }
    if n > 3u { v.w = elem_a(at + 3u); }
    return v;
}

fn read_b(at: u32, n: u32) -> vec4<f32> {
    var v = vec4<f32>();
    if p.aligned == 1u {
        if n != 0u {
            v = b[at / 4u];
        }
        return v;
    }
    if n > 0u { v.x = elem_b(at); }
    if n > 1u { v.y = elem_b(at + 1u); }
    if n > 2u { v.z = elem_b(at + 2u); }
    if n > 3u { v.w = elem_b(at + 3u); }
    return v;
}

// Element `at` of C = v, or += v.
fn put_c(at: u32, v: f32) {
    if p.acc == 1u {
        c[at / 4u][at % 4u] += v;
    } else {
        c[at / 4u][at % 4u] = v;
    }
}

// Columns col..col+3 of C's row `row` (offset `at`), those inside C.
fn write_c(at: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m || col >= p.n {
        return;
    }
    if p.aligned == 1u {
        if p.acc == 1u {
            c[at / 4u] += v;
        } else {
            c[at / 4u] = v;
        }
        return;
    }
    put_c(at, v.x);
    if col + 1u < p.n { put_c(at + 1u, v.y); }
    if col + 2u < p.n { put_c(at + 2u, v.z); }
    if col + 3u < p.n { put_c(at + 3u, v.w); }
}
