// In-place optimizer updates (Lion with β names as in lion.rs, AdamW, Sophia) of f32 or bf16 parameters, every
// parameter whose weights, gradient and state sit in the bound buffers in one dispatch (a table
// of segments says where each is), and stochastic rounding to bf16. The formulas match
// `Rule::apply`; `pcg`, `noise` and `round_bf16` are the prelude's. BF16 is packed two per u32
// (element 2i in the low half); one thread owns a whole word.
struct Params {
    n: u32,        // update: threads in all segments; round_sr: elements
    g_off: u32,    // round_sr: element offset of its input
    key: u32,      // round_sr: stochastic-rounding key
    segments: u32, // update: entries of `seg`
    bf16: u32,     // 1: w holds packed bf16
    rule: u32,     // RULE_LION, RULE_ADAMW, RULE_SOPHIA or RULE_SOPHIA_HESSIAN
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,      // 1 - b1^t
    bc2_sqrt: f32, // sqrt(1 - b2^t)
    use_ctl: u32,  // 1: the step control decides (ctl[0] scales g; ctl[1] == 0 skips the update)
    ctl_off: u32,  // element offset of the step control
    rho: f32,      // Sophia's γ
    tokens: f32,   // Sophia's Hessian update: B, the tokens the sampled-label loss averages over
}

// Update rules (p.rule): mod.rs's RuleCode, checked by tests/kernel_params.rs.
const RULE_LION: u32 = 0u;
const RULE_ADAMW: u32 = 1u;
const RULE_SOPHIA: u32 = 2u;
const RULE_SOPHIA_HESSIAN: u32 = 3u;

// One parameter (or piece of one) of the update: element offsets of its weights, gradient and state in their
// buffers, its length, weight decay and rounding key, and its first thread in the dispatch.
struct Segment {
    w_off: u32,
    g_off: u32,
    s_off: u32,
    n: u32,
    wd: f32, // decoupled weight decay (0: this parameter does not decay)
    key: u32,
    first: u32,
    base: u32, // the index of element 0 in its parameter (a piece of a large one starts later)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<u32>; // parameters (f32 bits or bf16 pairs)
@group(0) @binding(2) var<storage, read> g: array<f32>;       // gradients
@group(0) @binding(3) var<storage, read_write> s: array<f32>; // state: Lion m; AdamW (m, v), Sophia (m, h) pairs
@group(0) @binding(4) var<storage, read> ctl: array<f32>;     // step control (clip.wgsl's `control`)
@group(0) @binding(5) var<storage, read> seg: array<Segment>; // sorted by `first`

// New weight of element i of segment sg from its old value and the gradient scale; updates
// the element's state.
fn rule(sg: Segment, i: u32, wi: f32, gscale: f32) -> f32 {
    let gi = g[sg.g_off + i] * gscale;
    if p.rule == RULE_LION {
        let m = s[sg.s_off + i];
        let u = sign(p.b2 * m + (1.0 - p.b2) * gi);
        s[sg.s_off + i] = p.b1 * m + (1.0 - p.b1) * gi;
        return wi - p.lr * u - p.lr * sg.wd * wi;
    }
    let k = sg.s_off + 2u * i;
    if p.rule == RULE_SOPHIA_HESSIAN { // h only; the weight is written back unchanged
        s[k + 1u] = p.b2 * s[k + 1u] + (1.0 - p.b2) * p.tokens * gi * gi;
        return wi;
    }
    if p.rule == RULE_SOPHIA {
        let w1 = wi - p.lr * sg.wd * wi;
        let m = p.b1 * s[k] + (1.0 - p.b1) * gi;
        s[k] = m;
        return w1 - p.lr * clamp(m / max(p.rho * s[k + 1u], p.eps), -1.0, 1.0);
    }
    let w1 = wi - p.lr * sg.wd * wi;
    let m = p.b1 * s[k] + (1.0 - p.b1) * gi;
    let v = p.b2 * s[k + 1u] + (1.0 - p.b2) * gi * gi;
    s[k] = m;
    s[k + 1u] = v;
    return w1 - p.lr * (m / p.bc1) / (sqrt(v) / p.bc2_sqrt + p.eps);
}


// The segment that thread t belongs to: the last one starting at or before t.
fn find(t: u32) -> Segment {
    var lo = 0u;
    var hi = p.segments - 1u;
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if seg[mid].first <= t { lo = mid; } else { hi = mid - 1u; }
    }
    return seg[lo];
}

// Every parameter of the dispatch: one thread per f32 element, or per u32 word of bf16.
@compute @workgroup_size(WG)
fn update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let t = flat_thread(wid, nwg, lid);
    if t >= p.n { return; }
    var gscale = 1.0;
    if p.use_ctl != 0u {
        if ctl[p.ctl_off + 1u] == 0.0 { return; } // a NaN/Inf step: nothing changes
        gscale = ctl[p.ctl_off];
    }
    let sg = find(t);
    if p.bf16 == 0u {
        let i = t - sg.first;
        let e = sg.w_off + i;
        w[e] = bitcast<u32>(rule(sg, i, bitcast<f32>(w[e]), gscale));
        return;
    }
    // Word `word` holds buffer elements 2·word and 2·word + 1; only those in the view change.
    let word = sg.w_off / 2u + t - sg.first;
    let end = sg.w_off + sg.n;
    var bits = w[word];
    for (var h = 0u; h < 2u; h++) {
        let e = 2u * word + h;
        if e >= sg.w_off && e < end {
            let i = e - sg.w_off;
            let shift = 16u * h;
            let old = bitcast<f32>(((bits >> shift) & 0xffffu) << 16u);
            let nb = round_bf16(rule(sg, i, old, gscale), noise(sg.key, sg.base + i));
            bits = (bits & ~(0xffffu << shift)) | (nb << shift);
        }
    }
    w[word] = bits;
}

// Stochastic rounding of g (f32, at g_off) into w (packed bf16): one thread per output word.
@compute @workgroup_size(WG)
fn round_sr(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let t = flat_thread(wid, nwg, lid);
    let i = 2u * t;
    if i >= p.n { return; }
    var bits = round_bf16(g[p.g_off + i], noise(p.key, i));
    if i + 1u < p.n { bits |= round_bf16(g[p.g_off + i + 1u], noise(p.key, i + 1u)) << 16u; }
    w[t] = bits;
}
