// Elementwise ops. `op` codes match elementwise.rs.
struct Params {
    n: u32,     // output elements
    op: u32,
    x_off: u32, // element offset of x (a for binary)
    y_off: u32, // element offset of y (dy for unary backward, b for binary), or of out (binary_into)
    nx: u32,    // elements of x before it repeats (broadcast), binary only
    ny: u32,    // elements of y before it repeats
    s: f32,     // scale factor
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> y: array<f32>;

// Op codes (p.op): elementwise.rs's UnaryCode and Binary, checked by tests/kernel_params.rs.
const UNARY_NEG: u32 = 0u;
const UNARY_EXP: u32 = 1u;
const UNARY_LOG: u32 = 2u;
const UNARY_SQRT: u32 = 3u;
const UNARY_RSQRT: u32 = 4u;
const UNARY_SILU: u32 = 5u;
const UNARY_GELU: u32 = 6u;
const UNARY_RELU: u32 = 7u;
const UNARY_SCALE: u32 = 8u;
const BINARY_ADD: u32 = 0u;
const BINARY_SUB: u32 = 1u;
const BINARY_MUL: u32 = 2u;
const BINARY_DIV: u32 = 3u;

const GELU_C: f32 = 0.7978845608028654; // sqrt(2 / pi)

fn gelu_u(v: f32) -> f32 {
    return clamp(GELU_C * (v + 0.044715 * v * v * v), -15.0, 15.0);
}

fn unary_f(op: u32, v: f32) -> f32 {
    switch op {
        case UNARY_NEG: { return -v; }
        case UNARY_EXP: { return exp(v); }
        case UNARY_LOG: { return log(v); }
        case UNARY_SQRT: { return sqrt(v); }
        case UNARY_RSQRT: { return inverseSqrt(v); }
        case UNARY_SILU: { return v / (1.0 + exp(-v)); }
        case UNARY_GELU: { return 0.5 * v * (1.0 + tanh(gelu_u(v))); }
        case UNARY_RELU: { return max(v, 0.0); }
        case UNARY_SCALE, default: { return p.s * v; }
    }
}

// d unary_f / dv
fn unary_df(op: u32, v: f32) -> f32 {
    switch op {
        case UNARY_NEG: { return -1.0; }
        case UNARY_EXP: { return exp(v); }
        case UNARY_LOG: { return 1.0 / v; }
        case UNARY_SQRT: { return 0.5 * inverseSqrt(v); }
        case UNARY_RSQRT: { return -0.5 * inverseSqrt(v) / v; }
        case UNARY_SILU: {
            let s = 1.0 / (1.0 + exp(-v));
            return s * (1.0 + v * (1.0 - s));
        }
        case UNARY_GELU: {
            let t = tanh(gelu_u(v));
            return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044715 * v * v);
        }
        case UNARY_RELU: { return select(0.0, 1.0, v > 0.0); }
        case UNARY_SCALE, default: { return p.s; }
    }
}


@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    out[i] = unary_f(p.op, x[p.x_off + i]);
}

@compute @workgroup_size(WG)
fn unary_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    out[i] = y[p.y_off + i] * unary_df(p.op, x[p.x_off + i]);
}

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    var ia = i;
    if p.nx != p.n { ia = i % p.nx; }
    var ib = i;
    if p.ny != p.n { ib = i % p.ny; }
    let a = x[p.x_off + ia];
    let b = y[p.y_off + ib];
    var r: f32;
    switch p.op {
        case BINARY_ADD: { r = a + b; }
        case BINARY_SUB: { r = a - b; }
        case BINARY_MUL: { r = a * b; }
        case BINARY_DIV, default: { r = a / b; }
    }
    out[i] = r;
}

// out[y_off + i] = out[y_off + i] op x[x_off + i % nx], in place (y_off: out's offset).
@compute @workgroup_size(WG)
fn binary_into(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    let o = p.y_off + i;
    let b = x[p.x_off + i % p.nx];
    switch p.op {
        case BINARY_ADD: { out[o] += b; }
        case BINARY_SUB: { out[o] -= b; }
        case BINARY_MUL: { out[o] *= b; }
        case BINARY_DIV, default: { out[o] /= b; }
    }
}
