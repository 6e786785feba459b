// Softmax over rows, one workgroup per row; optional causal mask (see Mask in softmax.rs).
struct Params {
    rows: u32,
    cols: u32,
    x_off: u32,  // element offset of x (y for the backward)
    dy_off: u32, // element offset of dy (backward only)
    causal: u32, // 1: row r keeps columns j <= r % tq + shift
    tq: u32,
    shift: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;

// Columns of row r that take part.
fn valid(r: u32) -> u32 {
    if p.causal == 1u { return min(p.cols, r % p.tq + p.shift + 1u); }
    return p.cols;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; } // uniform per workgroup, so barriers stay uniform
    let n = valid(r);
    let base = r * p.cols;
    var m = -3.4e38;
    for (var j = lid; j < n; j += WG) { m = max(m, x[p.x_off + base + j]); }
    m = workgroup_max(lid, m);
    var s = 0.0;
    for (var j = lid; j < n; j += WG) { s += exp(x[p.x_off + base + j] - m); }
    let inv = 1.0 / workgroup_sum(lid, s);
    for (var j = lid; j < p.cols; j += WG) {
        var y = 0.0;
        if j < n { y = exp(x[p.x_off + base + j] - m) * inv; }
        out[base + j] = y;
    }
}

// dx = y * (dy - Σ dy·y); x holds y here.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let base = r * p.cols;
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) { s += x[p.x_off + base + j] * dy[p.dy_off + base + j]; }
    let dot = workgroup_sum(lid, s);
    for (var j = lid; j < p.cols; j += WG) {
        out[base + j] = x[p.x_off + base + j] * (dy[p.dy_off + base + j] - dot);
    }
}
