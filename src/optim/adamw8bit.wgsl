// AdamW with 8-bit block-wise moments (adamw8bit_update.rs has the CPU twin): one workgroup per
// block of 256 elements, 4 elements a thread. Each thread dequantizes its elements' m and v,
// updates them and the weight in f32, then the block's new absmax is reduced in workgroup memory
// and the moments requantized to the nearest code of their map.
const BLOCK: u32 = 256u;
const THREADS: u32 = 64u; // BLOCK / 4: each thread owns one code word of m and one of v
const WORDS: u32 = 64u;   // code words of one moment of one block

struct Params {
    n: u32,        // elements of this piece of the parameter
    blocks: u32,   // its blocks: ceil(n / BLOCK)
    w_off: u32,    // element offset of its weights in the bound window of w
    g_off: u32,    // element offset of its gradient
    c_off: u32,    // word offset of its first block's codes
    s_off: u32,    // offset of its first block's (absmax m, absmax v)
    bf16: u32,     // 1: w holds packed bf16
    key: u32,      // stochastic-rounding key of this parameter and step
    base: u32,     // index in the parameter of the piece's element 0 (the rounding noise's)
    use_ctl: u32,  // 1: the step control decides (ctl[0] scales g; ctl[1] == 0 skips the update)
    ctl_off: u32,  // element offset of the step control
    lr: f32,
    wd: f32,       // decoupled weight decay
    b1: f32,
    b2: f32,
    eps: f32,
    bc1: f32,      // 1 - b1^t
    bc2_sqrt: f32, // sqrt(1 - b2^t)
}

@group(0) @binding(0) var<uniform> p: Params;
// Parameters (f32 bits or bf16 pairs): atomic so that two threads may each rewrite their half
// of a shared bf16 word (views may start at odd elements).
@group(0) @binding(1) var<storage, read_write> w: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
// Per block: WORDS words of m codes, then WORDS of v codes; element j is byte j % 4 of word j / 4.
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> absmax: array<f32>; // (m, v) per block
@group(0) @binding(5) var<storage, read> ctl: array<f32>;          // step control (clip.wgsl's)
@group(0) @binding(6) var<storage, read> qmap: array<f32>;         // signed map, then unsigned

var<workgroup> red: array<vec2<f32>, THREADS>;

// The index of the value of the map at `at` nearest to x (the lower on a tie): quant8.rs's `quantize`.
fn quantize(x: f32, at: u32) -> u32 {
    var lo = 0u;
    var hi = 255u;
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if qmap[at + mid] <= x { lo = mid; } else { hi = mid - 1u; }
    }
    if lo < 255u && qmap[at + lo + 1u] - x < x - qmap[at + lo] { lo += 1u; }
    return lo;
}

fn normalise(x: f32, a: f32) -> f32 {
    if a > 0.0 { return x / a; }
    return 0.0;
}

fn adam(wi: f32, m: f32, v: f32) -> f32 {
    let w1 = wi - p.lr * p.wd * wi;
    return w1 - p.lr * (m / p.bc1) / (sqrt(v) / p.bc2_sqrt + p.eps);
}

@compute @workgroup_size(THREADS)
fn update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let b = flat_group(wid, nwg);
    if b >= p.blocks { return; } // the same for the whole workgroup
    var gscale = 1.0;
    var live = true;
    if p.use_ctl != 0u {
        live = ctl[p.ctl_off + 1u] != 0.0; // a NaN/Inf step: nothing changes
        gscale = ctl[p.ctl_off];
    }
    let cw = p.c_off + b * 2u * WORDS + lid;
    let qm = codes[cw];
    let qv = codes[cw + WORDS];
    let am = absmax[p.s_off + 2u * b];
    let av = absmax[p.s_off + 2u * b + 1u];
    var m = vec4<f32>(0.0);
    var v = vec4<f32>(0.0);
    for (var h = 0u; h < 4u; h++) {
        let i = b * BLOCK + 4u * lid + h;
        if i >= p.n || !live { continue; }
        let gi = g[p.g_off + i] * gscale;
        let m0 = qmap[(qm >> (8u * h)) & 0xffu] * am;
        let v0 = qmap[256u + ((qv >> (8u * h)) & 0xffu)] * av;
        m[h] = p.b1 * m0 + (1.0 - p.b1) * gi;
        v[h] = p.b2 * v0 + (1.0 - p.b2) * gi * gi;
        let e = p.w_off + i;
        if p.bf16 == 0u {
            atomicStore(&w[e], bitcast<u32>(adam(bitcast<f32>(atomicLoad(&w[e])), m[h], v[h])));
        } else {
            // Only this thread changes this half of the word: xor in the difference.
            let shift = 16u * (e % 2u);
            let old = (atomicLoad(&w[e / 2u]) >> shift) & 0xffffu;
            let nb = round_bf16(adam(bitcast<f32>(old << 16u), m[h], v[h]), noise(p.key, p.base + i));
            atomicXor(&w[e / 2u], (old ^ nb) << shift);
        }
    }
    red[lid] = vec2<f32>(max(max(abs(m.x), abs(m.y)), max(abs(m.z), abs(m.w))), max(max(v.x, v.y), max(v.z, v.w)));
    workgroupBarrier();
    for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let top = red[0];
    if !live { return; }
    var cm = 0u;
    var cv = 0u;
    for (var h = 0u; h < 4u; h++) {
        cm |= quantize(normalise(m[h], top.x), 0u) << (8u * h);
        cv |= quantize(normalise(v[h], top.y), 256u) << (8u * h);
    }
    codes[cw] = cm;
    codes[cw + WORDS] = cv;
    if lid == 0u {
        absmax[p.s_off + 2u * b] = top.x;
        absmax[p.s_off + 2u * b + 1u] = top.y;
    }
}
