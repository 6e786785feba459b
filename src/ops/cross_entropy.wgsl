// Cross-entropy over whole rows of logits x: [rows, cols] (rows r0.. of the batch): each row's
// log-sum-exp and loss, and d logits = (softmax - onehot) · scale (· dy).
struct Params {
    rows: u32,
    cols: u32,
    r0: u32,     // batch row of x's row 0: targets, lse and row loss are indexed from it
    x_off: u32,
    t_off: u32,
    flags: u32,  // softmax_grad: 1 multiplies by dy (aux[dy_off])
    ignore: u32, // rows with this target count for nothing
    scale: f32,  // 1 / rows not ignored (0 when all are); 1 for the fused op's softmax_grad
    dy_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// x: logits, a temporary that softmax_grad overwrites with their gradient.
@group(0) @binding(1) var<storage, read_write> x: array<f32>;   // [rows, cols]
@group(0) @binding(2) var<storage, read> tg: array<u32>;        // [batch rows]
@group(0) @binding(3) var<storage, read_write> lse: array<f32>; // [batch rows]
@group(0) @binding(4) var<storage, read_write> aux: array<f32>; // row loss [batch rows], or dy

const NEG_INF: u32 = 0xff800000u;
var<workgroup> red: array<vec2<f32>, WG>;

// A running (max m, sum of exp(x - m)) with the value v folded in.
fn fold(acc: vec2<f32>, v: f32) -> vec2<f32> {
    if v <= acc.x { return vec2(acc.x, acc.y + exp(v - acc.x)); }
    return vec2(v, acc.y * exp(acc.x - v) + 1.0);
}

fn merge(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    if m == bitcast<f32>(NEG_INF) { return a; }
    return vec2(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// One workgroup per row, one pass over it: its log-sum-exp and its loss (lse - x[target]) ·
// scale. Four loads in flight per thread, to hide memory latency on long rows (measurements in
// docs/PERFORMANCE.md).
@compute @workgroup_size(WG)
fn row_loss(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let base = p.x_off + r * p.cols;
    var acc = vec2(bitcast<f32>(NEG_INF), 0.0);
    var j = lid;
    for (; j + 3u * WG < p.cols; j += 4u * WG) {
        let v = vec4(x[base + j], x[base + j + WG], x[base + j + 2u * WG], x[base + j + 3u * WG]);
        let m = max(acc.x, max(max(v.x, v.y), max(v.z, v.w)));
        let e = exp(v - vec4(m));
        acc = vec2(m, acc.y * exp(acc.x - m) + e.x + e.y + e.z + e.w);
    }
    for (; j < p.cols; j += WG) {
        acc = fold(acc, x[base + j]);
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] = merge(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    if lid != 0u { return; }
    let b = p.r0 + r;
    let tgt = tg[p.t_off + b];
    let l = red[0].x + log(red[0].y);
    lse[b] = l;
    if tgt == p.ignore {
        aux[b] = 0.0;
    } else {
        aux[b] = (l - x[base + tgt]) * p.scale;
    }
}

// x[r, j] <- (exp(x[r, j] - lse[r]) - [j == target[r]]) · scale (· dy); 0 on ignored rows.
@compute @workgroup_size(WG)
fn softmax_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.rows * p.cols { return; }
    let b = p.r0 + i / p.cols;
    let j = i % p.cols;
    let tgt = tg[p.t_off + b];
    var d = 0.0;
    if tgt != p.ignore {
        d = exp(x[p.x_off + i] - lse[b]);
        if tgt == j { d -= 1.0; }
        d *= p.scale;
        if (p.flags & 1u) != 0u { d *= aux[p.dy_off]; }
    }
    x[p.x_off + i] = d;
}
