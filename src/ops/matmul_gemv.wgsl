// Products of few rows (decoding one token a sequence): C [M, N] = A [M, K] · Bᵀ, B stored [N, K],
// M <= ROWS. Such a product is bound by reading B, so each workgroup reads COLS rows of B once,
// as vec4s along K (contiguous), and multiplies each with every row of A: no tile of unused rows,
// and N / COLS workgroups to spread over the GPU. Needs K and the offsets of A and B multiples of 4.
const COLS: u32 = 8u;         // output columns a workgroup
const LANES: u32 = WG / COLS; // threads a column
// At most 8 rows of A (ROWS in matmul_gemv.rs), their sums in the lanes of two vec4s: an array
// indexed by row would live in slow local memory on some drivers.

var<workgroup> part: array<vec4<f32>, 2u * WG>;

// Row m of A's vec4 i, times w: 0 past the rows.
fn row_dot(w: vec4<f32>, m: u32, i: u32) -> f32 {
    if m >= p.m { return 0.0; }
    return dot(w, a[p.a_off / 4u + m * (p.k / 4u) + i]);
}

@compute @workgroup_size(WG)
fn gemv_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let col = flat_group(wid, nwg) * COLS + lid / LANES;
    let lane = lid % LANES;
    let k4 = p.k / 4u;
    var lo = vec4<f32>(); // rows 0..3
    var hi = vec4<f32>(); // rows 4..7
    if col < p.n {
        let row_b = p.b_off / 4u + col * k4;
        for (var i = lane; i < k4; i += LANES) {
            let w = b[row_b + i];
            lo += vec4(row_dot(w, 0u, i), row_dot(w, 1u, i), row_dot(w, 2u, i), row_dot(w, 3u, i));
            if p.m > 4u {
                hi += vec4(row_dot(w, 4u, i), row_dot(w, 5u, i), row_dot(w, 6u, i), row_dot(w, 7u, i));
            }
        }
    }
    part[lid] = lo;
    part[WG + lid] = hi;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            part[lid] += part[lid + s];
            part[WG + lid] += part[WG + lid + s];
        }
        workgroupBarrier();
    }
    if lane == 0u && col < p.n {
        for (var m = 0u; m < p.m; m++) {
            let v = select(part[WG + lid], part[lid], m < 4u);
            put_c(p.c_off + m * p.n + col, v[m % 4u]);
        }
    }
}
