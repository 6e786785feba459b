// In-place optimizer updates (Lion as the spec writes it, AdamW) of f32 or bf16 parameters,
// and stochastic rounding to bf16. The formulas match `Rule::apply` and the hash `pcg` in mod.rs.
// BF16 is packed two per u32 (element 2i in the low half); one thread owns a whole word.
struct Params {
    n: u32,     // elements of the parameter
    w_off: u32, // element offset of the parameter in its buffer
    g_off: u32, // element offset of the gradient
    bf16: u32,  // 1: w holds packed bf16
    rule: u32,  // 0: Lion, 1: AdamW
    key: u32,   // stochastic-rounding key of this (seed, parameter, step)
    lr: f32,
    wd: f32,    // decoupled weight decay (0: this parameter does not decay)
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,      // 1 - b1^t
    bc2_sqrt: f32, // sqrt(1 - b2^t)
    use_ctl: u32,  // 1: the step control decides (ctl[0] scales g; ctl[1] == 0 skips the update)
    ctl_off: u32,  // element offset of the step control
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<u32>; // parameter (f32 bits or bf16 pairs)
@group(0) @binding(2) var<storage, read> g: array<f32>;       // gradient
@group(0) @binding(3) var<storage, read_write> s: array<f32>; // state: Lion m; AdamW (m, v) pairs
@group(0) @binding(4) var<storage, read> ctl: array<f32>;     // step control (clip.wgsl's `control`)

fn pcg(v: u32) -> u32 {
    let st = v * 747796405u + 2891336453u;
    let x = ((st >> ((st >> 28u) + 4u)) ^ st) * 277803737u;
    return (x >> 22u) ^ x;
}

fn noise(i: u32) -> u32 {
    return pcg(pcg(i) ^ p.key);
}

// bf16 bits of x, rounded up with probability equal to the dropped fraction.
fn round_bf16(x: f32, r: u32) -> u32 {
    let b = bitcast<u32>(x);
    if (b & 0x7f800000u) == 0x7f800000u { // inf and NaN: nothing to round
        if (b & 0x7fffffu) != 0u { return (b >> 16u) | 0x40u; }
        return b >> 16u;
    }
    return (b + (r & 0xffffu)) >> 16u;
}

// New weight of element i from its old value and the gradient scale; updates the element's state.
fn rule(i: u32, wi: f32, gscale: f32) -> f32 {
    let gi = g[p.g_off + i] * gscale;
    if p.rule == 0u {
        let m = s[i];
        let u = sign(p.b2 * m + (1.0 - p.b2) * gi);
        s[i] = p.b1 * m + (1.0 - p.b1) * gi;
        return wi - p.lr * u - p.lr * p.wd * wi;
    }
    let w1 = wi - p.lr * p.wd * wi;
    let m = p.b1 * s[2u * i] + (1.0 - p.b1) * gi;
    let v = p.b2 * s[2u * i + 1u] + (1.0 - p.b2) * gi * gi;
    s[2u * i] = m;
    s[2u * i + 1u] = v;
    return w1 - p.lr * (m / p.bc1) / (sqrt(v) / p.bc2_sqrt + p.eps);
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

@compute @workgroup_size(256)
fn update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    var gscale = 1.0;
    if p.use_ctl != 0u {
        if ctl[p.ctl_off + 1u] == 0.0 { return; } // a NaN/Inf step: nothing changes
        gscale = ctl[p.ctl_off];
    }
    if p.bf16 == 0u {
        if t >= p.n { return; }
        let e = p.w_off + t;
        w[e] = bitcast<u32>(rule(t, bitcast<f32>(w[e]), gscale));
        return;
    }
    // Word `word` holds buffer elements 2·word and 2·word + 1; only those in the view change.
    let word = p.w_off / 2u + t;
    let end = p.w_off + p.n;
    if 2u * word >= end { return; }
    var bits = w[word];
    for (var h = 0u; h < 2u; h++) {
        let e = 2u * word + h;
        if e >= p.w_off && e < end {
            let i = e - p.w_off;
            let shift = 16u * h;
            let old = bitcast<f32>(((bits >> shift) & 0xffffu) << 16u);
            let nb = round_bf16(rule(i, old, gscale), noise(i));
            bits = (bits & ~(0xffffu << shift)) | (nb << shift);
        }
    }
    w[word] = bits;
}

// Stochastic rounding of g (f32, at g_off) into w (packed bf16): one thread per output word.
@compute @workgroup_size(256)
fn round_sr(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = flat(wid, nwg, lid);
    let i = 2u * t;
    if i >= p.n { return; }
    var bits = round_bf16(g[p.g_off + i], noise(i));
    if i + 1u < p.n { bits |= round_bf16(g[p.g_off + i + 1u], noise(i + 1u)) << 16u; }
    w[t] = bits;
}
