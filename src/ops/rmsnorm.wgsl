// RMSNorm over the last dim: one workgroup per row (forward), a tree in shared memory for sums.
// add_forward fuses the residual add before it (h = x + y, then the norm of h); the backward can
// add the gradient that reaches h directly (dres), so the fused op's backward is one kernel too.
struct Params {
    rows: u32,
    cols: u32,
    x_off: u32,
    g_off: u32,   // element offset of gamma
    y_off: u32,   // element offset of y (add_forward) or dy (backward)
    eps: f32,
    rows_per_group: u32, // backward: rows one workgroup handles; it owns one partial dgamma row
    res_off: u32, // backward: element offset of dres
    add_res: u32, // backward: 1 adds dres to dx
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // x, or h in the backward
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>; // [rows], written by the forward
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // the norm, or dx in the backward
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> y: array<f32>;          // add_forward: y; backward: dy
@group(0) @binding(6) var<storage, read_write> aux: array<f32>;  // add_forward: h; backward: [groups, cols] partial dgamma
@group(0) @binding(7) var<storage, read> dres: array<f32>;       // backward: dL/dh from h's other uses

// 1 / sqrt(mean(v²) + eps) from this thread's share `acc` of Σ v²; thread 0 stores it.
fn row_rstd(r: u32, lid: u32, acc: f32) -> f32 {
    let s = 1.0 / sqrt(workgroup_sum(lid, acc) / f32(p.cols) + p.eps);
    if lid == 0u { rstd[r] = s; }
    return s;
}

// out = x * rstd * gamma
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let xb = p.x_off + r * p.cols;
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[xb + c];
        acc += v * v;
    }
    let s = row_rstd(r, lid, acc);
    for (var c = lid; c < p.cols; c += WG) {
        out[r * p.cols + c] = x[xb + c] * s * gamma[p.g_off + c];
    }
}

// h = x + y (into aux), out = h * rstd(h) * gamma. Each thread re-reads only the h it wrote.
@compute @workgroup_size(WG)
fn add_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let xb = p.x_off + r * p.cols;
    let yb = p.y_off + r * p.cols;
    let hb = r * p.cols;
    var acc = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let v = x[xb + c] + y[yb + c];
        aux[hb + c] = v;
        acc += v * v;
    }
    let s = row_rstd(r, lid, acc);
    for (var c = lid; c < p.cols; c += WG) {
        out[hb + c] = aux[hb + c] * s * gamma[p.g_off + c];
    }
}

// dx = rstd * (gamma*dy - xhat * mean(gamma*dy*xhat)) [+ dres], xhat = x * rstd.
// Each workgroup walks `rows_per_group` rows in order and keeps Σ dy*xhat per column in its
// own aux row (each column always the same thread: no races, a fixed order).
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let blk = flat_group(wid, nwg);
    let r0 = blk * p.rows_per_group;
    if r0 >= p.rows { return; }
    let r1 = min(r0 + p.rows_per_group, p.rows);
    for (var r = r0; r < r1; r++) {
        let s = rstd[r];
        let xb = p.x_off + r * p.cols;
        let db = p.y_off + r * p.cols;
        var acc = 0.0;
        for (var c = lid; c < p.cols; c += WG) {
            acc += y[db + c] * gamma[p.g_off + c] * x[xb + c];
        }
        let m = workgroup_sum(lid, acc) * s / f32(p.cols);
        for (var c = lid; c < p.cols; c += WG) {
            let g = y[db + c];
            let xhat = x[xb + c] * s;
            var dx = s * (g * gamma[p.g_off + c] - xhat * m);
            if p.add_res != 0u { dx = dres[p.res_off + r * p.cols + c] + dx; }
            out[r * p.cols + c] = dx;
            let k = blk * p.cols + c;
            if r == r0 { aux[k] = g * xhat; } else { aux[k] += g * xhat; }
        }
    }
}
