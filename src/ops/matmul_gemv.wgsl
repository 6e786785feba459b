// Products of few rows (decoding one token a sequence): C [M, N] = A [M, K] · Bᵀ, B stored [N, K],
// M <= ROWS. Such a product is bound by reading B, so each workgroup reads COLS rows of B once,
// as vec4s along K (contiguous), and multiplies each with every row of A: no tile of unused rows,
// and N / COLS workgroups to spread over the GPU. Needs K and the offsets of A and B multiples of 4.
const COLS: u32 = 4u;         // output columns a workgroup
const LANES: u32 = WG / COLS; // threads a column
const ROWS: u32 = 8u;         // most rows of A (gemv_rows in matmul.rs)

var<workgroup> part: array<f32, WG * ROWS>;

@compute @workgroup_size(WG)
fn gemv_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let col = flat_group(wid, nwg) * COLS + lid / LANES;
    let lane = lid % LANES;
    let k4 = p.k / 4u;
    var sums: array<f32, ROWS>;
    if col < p.n {
        let row_b = p.b_off / 4u + col * k4;
        for (var i = lane; i < k4; i += LANES) {
            let w = b[row_b + i];
            for (var m = 0u; m < ROWS; m++) {
                if m < p.m { sums[m] += dot(w, a[p.a_off / 4u + m * k4 + i]); }
            }
        }
    }
    for (var m = 0u; m < ROWS; m++) { part[m * WG + lid] = sums[m]; }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if lane < s {
            for (var m = 0u; m < ROWS; m++) { part[m * WG + lid] += part[m * WG + lid + s]; }
        }
        workgroupBarrier();
    }
    if lane == 0u && col < p.n {
        for (var m = 0u; m < p.m; m++) { put_c(p.c_off + m * p.n + col, part[m * WG + lid]); }
    }
}
