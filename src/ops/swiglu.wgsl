// SwiGLU's gate, silu(gate) * up, and its backward: one thread per element, one pass each way.
// The formulas match swiglu.rs (and the unfused silu and mul in elementwise.wgsl). gate and up
// are [rows, cols] blocks with a row stride: separate tensors, or the halves of one [rows, 2·cols].
struct Params {
    n: u32,      // elements: rows * cols
    cols: u32,
    rs: u32,     // row stride of gate and up
    g_off: u32,  // element offset of gate
    u_off: u32,  // element offset of up
    dy_off: u32, // element offset of dy (backward; dy is [rows, cols])
    ors: u32,    // backward: row stride of the output, and where dgate and dup start in it
    dg_off: u32,
    du_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // y, or dgate and dup
@group(0) @binding(4) var<storage, read> dy: array<f32>;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// y = silu(g) * u, silu(g) = g / (1 + exp(-g))
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= p.n { return; }
    let e = (i / p.cols) * p.rs + i % p.cols;
    let g = gate[p.g_off + e];
    out[i] = g / (1.0 + exp(-g)) * up[p.u_off + e];
}

// dgate = dy * u * silu'(g), silu'(g) = s * (1 + g * (1 - s)) with s = sigmoid(g); dup = dy * silu(g)
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= p.n { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    let e = r * p.rs + c;
    let g = gate[p.g_off + e];
    let d = dy[p.dy_off + i];
    let ex = 1.0 + exp(-g);
    let s = 1.0 / ex;
    let o = r * p.ors + c;
    out[p.dg_off + o] = d * up[p.u_off + e] * (s * (1.0 + g * (1.0 - s)));
    out[p.du_off + o] = d * (g / ex);
}
