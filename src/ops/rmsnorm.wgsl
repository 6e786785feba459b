// RMSNorm over the last dim: one workgroup per row (forward), a tree in shared memory for sums.
struct Params {
    rows: u32,
    cols: u32,
    x_off: u32,
    g_off: u32,   // element offset of gamma
    dy_off: u32,  // element offset of dy (backward)
    eps: f32,
    rows_per_group: u32, // backward: rows one workgroup handles; it owns one partial dgamma row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>; // [rows], written by forward
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // y, or dx in the backward
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> dgamma_part: array<f32>; // [groups, cols]

var<workgroup> sh: array<f32, 256>;

// Sum of `v` over the 256 threads of the workgroup; every thread gets the total.
fn tree_sum(lid: u32, v: f32) -> f32 {
    sh[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s { sh[lid] += sh[lid + s]; }
        workgroupBarrier();
    }
    let total = sh[0];
    workgroupBarrier(); // all have read sh[0] before the next call overwrites it
    return total;
}

// y = x * rstd * gamma, rstd = 1 / sqrt(mean(x²) + eps)
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    if r >= p.rows { return; }
    let xb = p.x_off + r * p.cols;
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += 256u) {
        let v = x[xb + c];
        acc += v * v;
    }
    let s = 1.0 / sqrt(tree_sum(lid, acc) / f32(p.cols) + p.eps);
    if lid == 0u { rstd[r] = s; }
    for (var c = lid; c < p.cols; c += 256u) {
        out[r * p.cols + c] = x[xb + c] * s * gamma[p.g_off + c];
    }
}

// dx = rstd * (gamma*dy - xhat * mean(gamma*dy*xhat)), xhat = x * rstd.
// Each workgroup walks `rows_per_group` rows in order and keeps Σ dy*xhat per column in its
// own dgamma_part row (each column always the same thread: no races, a fixed order).
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let blk = wid.x + wid.y * nwg.x;
    let r0 = blk * p.rows_per_group;
    if r0 >= p.rows { return; }
    let r1 = min(r0 + p.rows_per_group, p.rows);
    for (var r = r0; r < r1; r++) {
        let s = rstd[r];
        let xb = p.x_off + r * p.cols;
        let db = p.dy_off + r * p.cols;
        var acc = 0.0;
        for (var c = lid; c < p.cols; c += 256u) {
            acc += dy[db + c] * gamma[p.g_off + c] * x[xb + c];
        }
        let m = tree_sum(lid, acc) * s / f32(p.cols);
        for (var c = lid; c < p.cols; c += 256u) {
            let g = dy[db + c];
            let xhat = x[xb + c] * s;
            out[r * p.cols + c] = s * (g * gamma[p.g_off + c] - xhat * m);
            let k = blk * p.cols + c;
            if r == r0 { dgamma_part[k] = g * xhat; } else { dgamma_part[k] += g * xhat; }
        }
    }
}
