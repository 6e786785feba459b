// SwiGLU's gate, silu(gate) * up, and its backward: four elements a thread, one pass each way.
// The formulas match swiglu.rs (and the unfused silu and mul in elementwise.wgsl). gate and up
// are [rows, cols] blocks with a row stride: separate tensors, or the halves of one [rows, 2·cols].
// Where every offset and row length is a multiple of 4 (p.vec), the four are one vec4 of each
// input and output (more bytes in flight than one element a thread: docs/PERFORMANCE.md);
// otherwise each is read and written on its own.
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
    vec: u32,    // 1: all of the above (but n) multiples of 4, and n too
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> up: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>; // y, or dgate and dup
@group(0) @binding(4) var<storage, read> dy: array<vec4<f32>>;

// The first of this thread's four elements.
fn first(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return 4u * flat_thread(wid, nwg, lid);
}

// Where element i of the [rows, cols] block lies in gate and up (past their offsets).
fn at(i: u32) -> u32 {
    return (i / p.cols) * p.rs + i % p.cols;
}

// The same element of the output laid out with row stride ors.
fn out_at(i: u32) -> u32 {
    return (i / p.cols) * p.ors + i % p.cols;
}

fn silu(g: vec4<f32>) -> vec4<f32> {
    return g / (1.0 + exp(-g));
}

// dgate and dup for gate g, up u and dy d: dgate = d * u * silu'(g) with
// silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g); dup = d * silu(g).
fn grads(g: vec4<f32>, u: vec4<f32>, d: vec4<f32>) -> array<vec4<f32>, 2> {
    let ex = 1.0 + exp(-g);
    let s = 1.0 / ex;
    return array(d * u * (s * (1.0 + g * (1.0 - s))), d * (g / ex));
}

const G: u32 = 0u;
const U: u32 = 1u;

// Elements i .. i+3 (those before n) of gate (G) or up (U), one at a time: element j at
// off + at(j).
fn gather(which: u32, off: u32, i: u32) -> vec4<f32> {
    var v = vec4(0.0);
    for (var j = 0u; j < 4u; j++) {
        let e = off + at(i + j);
        if i + j < p.n && which == G {
            v[j] = gate[e / 4u][e % 4u];
        } else if i + j < p.n {
            v[j] = up[e / 4u][e % 4u];
        }
    }
    return v;
}

// The same for dy, element j at p.dy_off + j (the forward has no dy bound).
fn gather_dy(i: u32) -> vec4<f32> {
    var v = vec4(0.0);
    for (var j = 0u; j < 4u; j++) {
        let e = p.dy_off + i + j;
        if i + j < p.n { v[j] = dy[e / 4u][e % 4u]; }
    }
    return v;
}

// y = silu(g) * u
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = first(wid, nwg, lid);
    if i >= p.n { return; }
    if p.vec == 1u {
        let e = at(i);
        out[i / 4u] = silu(gate[(p.g_off + e) / 4u]) * up[(p.u_off + e) / 4u];
        return;
    }
    let y = silu(gather(G, p.g_off, i)) * gather(U, p.u_off, i);
    for (var j = 0u; j < 4u; j++) {
        if i + j < p.n { out[(i + j) / 4u][(i + j) % 4u] = y[j]; }
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = first(wid, nwg, lid);
    if i >= p.n { return; }
    if p.vec == 1u {
        let e = at(i);
        let o = out_at(i);
        let d = grads(gate[(p.g_off + e) / 4u], up[(p.u_off + e) / 4u], dy[(p.dy_off + i) / 4u]);
        out[(p.dg_off + o) / 4u] = d[0];
        out[(p.du_off + o) / 4u] = d[1];
        return;
    }
    let d = grads(gather(G, p.g_off, i), gather(U, p.u_off, i), gather_dy(i));
    for (var j = 0u; j < 4u; j++) {
        if i + j < p.n {
            let o = out_at(i + j);
            out[(p.dg_off + o) / 4u][(p.dg_off + o) % 4u] = d[0][j];
            out[(p.du_off + o) / 4u][(p.du_off + o) % 4u] = d[1][j];
        }
    }
}
