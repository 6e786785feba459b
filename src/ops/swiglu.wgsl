// SwiGLU's gate, silu(gate) * up, and its backward: one thread per element, one pass each way.
// The formulas match swiglu.rs (and the unfused silu and mul in elementwise.wgsl).
struct Params {
    n: u32,      // elements
    g_off: u32,  // element offset of gate
    u_off: u32,  // element offset of up
    dy_off: u32, // element offset of dy (backward)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;   // y, or dgate in the backward
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dup: array<f32>;

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// y = silu(g) * u, silu(g) = g / (1 + exp(-g))
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= p.n { return; }
    let g = gate[p.g_off + i];
    out[i] = g / (1.0 + exp(-g)) * up[p.u_off + i];
}

// dgate = dy * u * silu'(g), silu'(g) = s * (1 + g * (1 - s)) with s = sigmoid(g); dup = dy * silu(g)
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if i >= p.n { return; }
    let g = gate[p.g_off + i];
    let d = dy[p.dy_off + i];
    let e = 1.0 + exp(-g);
    let s = 1.0 / e;
    out[i] = d * up[p.u_off + i] * (s * (1.0 + g * (1.0 - s)));
    dup[i] = d * (g / e);
}
