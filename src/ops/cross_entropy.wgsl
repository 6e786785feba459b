// Cross-entropy over rows of logits, a chunk of the vocabulary at a time: an online
// log-sum-exp, and the backward d logits = (softmax - onehot) · dy · scale.
// Row r's state st[3r..3r+3]: running max, running sum of exp(x - max), target logit.
// After the last chunk st[3r] holds the row's log-sum-exp.
struct Params {
    rows: u32,
    cols: u32,   // columns of x (this chunk of the vocabulary)
    c0: u32,     // vocabulary index of column 0
    x_off: u32,
    t_off: u32,
    flags: u32,  // 1: first chunk (state is fresh), 2: last chunk (write LSE and row loss)
    ignore: u32, // rows with this target count for nothing
    scale: f32,  // 1 / rows not ignored (0 when all are)
    dy_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x: a chunk's logits, a temporary that softmax_grad overwrites with their gradient.
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // [rows, cols]
@group(0) @binding(2) var<storage, read> tg: array<u32>;        // [rows]
@group(0) @binding(3) var<storage, read_write> st: array<f32>;  // [rows, 3]
@group(0) @binding(4) var<storage, read_write> aux: array<f32>; // row loss [rows], or dy [1]

const NEG_INF: u32 = 0xff800000u;
var<workgroup> red: array<f32, 256>;

// One workgroup per row: the chunk's max and sum of exponentials, merged into the state.
@compute @workgroup_size(256)
fn lse_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    if r >= p.rows { return; }
    let base = p.x_off + r * p.cols;
    var mx = bitcast<f32>(NEG_INF);
    for (var j = lid; j < p.cols; j += 256u) {
        mx = max(mx, x[base + j]);
    }
    red[lid] = mx;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let cmax = red[0];
    workgroupBarrier();
    var acc = 0.0;
    for (var j = lid; j < p.cols; j += 256u) {
        acc += exp(x[base + j] - cmax);
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if lid != 0u { return; }
    let tgt = tg[p.t_off + r];
    var m = cmax;
    var sum = red[0];
    var tl = 0.0;
    if (p.flags & 1u) == 0u {
        let m0 = st[3u * r];
        m = max(m0, cmax);
        sum = st[3u * r + 1u] * exp(m0 - m) + sum * exp(cmax - m);
        tl = st[3u * r + 2u];
    }
    if tgt >= p.c0 && tgt - p.c0 < p.cols { tl = x[base + tgt - p.c0]; }
    if (p.flags & 2u) != 0u {
        let lse = m + log(sum);
        st[3u * r] = lse;
        aux[r] = select((lse - tl) * p.scale, 0.0, tgt == p.ignore);
    } else {
        st[3u * r] = m;
        st[3u * r + 1u] = sum;
        st[3u * r + 2u] = tl;
    }
}

// x[r, j] <- (exp(x[r, j] - lse[r]) - [c0 + j == target[r]]) · dy · scale; 0 on ignored rows.
@compute @workgroup_size(256)
fn softmax_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= p.rows * p.cols { return; }
    let r = i / p.cols;
    let j = i % p.cols;
    let tgt = tg[p.t_off + r];
    var d = 0.0;
    if tgt != p.ignore {
        d = exp(x[p.x_off + i] - st[3u * r]);
        if tgt - p.c0 == j && tgt >= p.c0 { d -= 1.0; }
        d *= aux[p.dy_off] * p.scale;
    }
    x[p.x_off + i] = d;
}
