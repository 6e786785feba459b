// One token id per row of logits [rows, vocab], one workgroup a row. `greedy`: the argmax, ties to
// the lowest id. `sample`: temperature, top-k and top-p over the candidates in descending order of
// logit (ties by id), as the CPU kernel in sample.rs walks them, without sorting: each cut (the
// k-th candidate, the one where the mass reaches top_p, the sampled one) is found by search,
// first over the logits' order-preserving keys (16 thresholds a pass over the row, so 8 passes
// for 32 bits), then over the ids that tie at the key found (by bisection; ties are rare).
struct Params {
    rows: u32,
    vocab: u32,
    logits_off: u32, // element offset of logits
    top_k: u32,      // 0 or >= vocab: every token
    temperature: f32,
    top_p: f32,      // >= 1: every token
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read> uniforms: array<f32>;      // [rows], in [0, 1)
@group(0) @binding(4) var<storage, read_write> weights: array<f32>; // [rows, vocab] scratch

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> red_v: array<vec4<f32>, 4u * WG>;
var<workgroup> out_f: f32;
var<workgroup> out_u: u32;
var<workgroup> out_v: array<vec4<f32>, 4u>;

// The ordering of f32::total_cmp as unsigned integers.
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Workgroup reductions whose result every thread gets as a uniform value (loops may depend on it).
fn uniform_sum(lid: u32, v: f32) -> f32 {
    red_f[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { red_f[lid] += red_f[lid + s]; }
        workgroupBarrier();
    }
    if lid == 0u { out_f = red_f[0]; }
    return workgroupUniformLoad(&out_f);
}

fn uniform_max_u(lid: u32, v: u32) -> u32 {
    red_u[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { red_u[lid] = max(red_u[lid], red_u[lid + s]); }
        workgroupBarrier();
    }
    if lid == 0u { out_u = red_u[0]; }
    return workgroupUniformLoad(&out_u);
}

fn uniform_min_u(lid: u32, v: u32) -> u32 {
    return ~uniform_max_u(lid, ~v);
}

// Candidates so far are those at or before (cut_key, cut_id) in the order: a larger key, or the
// same key and an id at most cut_id.
fn at_or_before(k: u32, i: u32, cut_key: u32, cut_id: u32) -> bool {
    return k > cut_key || (k == cut_key && i <= cut_id);
}

// What a candidate adds to the running total: 1 (counting, for top-k) or its weight.
fn weight(row: u32, i: u32, count: bool) -> f32 {
    if count { return 1.0; }
    return weights[row * p.vocab + i];
}

// Σ weight of candidates with key k and an id at most id_le.
fn total_tied(lid: u32, row: u32, count: bool, cut: vec2<u32>, k: u32, id_le: u32) -> f32 {
    var s = 0.0;
    for (var i = lid; i <= min(id_le, p.vocab - 1u); i += WG) {
        let kk = key(logits[p.logits_off + row * p.vocab + i]);
        if kk == k && at_or_before(kk, i, cut.x, cut.y) { s += weight(row, i, count); }
    }
    return uniform_sum(lid, s);
}

// Σ weight of candidates with key >= lo + j·step, for the 16 thresholds j = 0..15 (lane j % 4
// of vec4 j / 4), in one pass over the row; every thread gets them as uniform values.
fn totals16(lid: u32, row: u32, count: bool, cut: vec2<u32>, lo: u32, step: u32) -> array<vec4<f32>, 4> {
    var s0 = vec4<f32>();
    var s1 = vec4<f32>();
    var s2 = vec4<f32>();
    var s3 = vec4<f32>();
    for (var i = lid; i < p.vocab; i += WG) {
        let k = key(logits[p.logits_off + row * p.vocab + i]);
        if k >= lo && at_or_before(k, i, cut.x, cut.y) {
            let j = vec4(min((k - lo) / step, 15u)); // the thresholds at or below k: 0..j
            let w = vec4(weight(row, i, count));
            s0 += select(vec4<f32>(), w, vec4(0u, 1u, 2u, 3u) <= j);
            s1 += select(vec4<f32>(), w, vec4(4u, 5u, 6u, 7u) <= j);
            s2 += select(vec4<f32>(), w, vec4(8u, 9u, 10u, 11u) <= j);
            s3 += select(vec4<f32>(), w, vec4(12u, 13u, 14u, 15u) <= j);
        }
    }
    red_v[lid] = s0;
    red_v[WG + lid] = s1;
    red_v[2u * WG + lid] = s2;
    red_v[3u * WG + lid] = s3;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            for (var q = 0u; q < 4u; q++) { red_v[q * WG + lid] += red_v[q * WG + lid + s]; }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        for (var q = 0u; q < 4u; q++) { out_v[q] = red_v[q * WG]; }
    }
    var t: array<vec4<f32>, 4>;
    t[0] = workgroupUniformLoad(&out_v[0]);
    t[1] = workgroupUniformLoad(&out_v[1]);
    t[2] = workgroupUniformLoad(&out_v[2]);
    t[3] = workgroupUniformLoad(&out_v[3]);
    return t;
}

fn reached(q: f32, goal: f32, strict: bool) -> bool {
    return select(q >= goal, q > goal, strict);
}

// The first candidate (key, id) whose running total, in order, reaches `goal` (passes it when
// `strict`), among those at or before `cut`; (0, 0xffffffff) when none does.
fn find(lid: u32, row: u32, count: bool, cut: vec2<u32>, goal: f32, strict: bool, kmin: u32, kmax: u32) -> vec2<u32> {
    // The largest key whose candidates at or above it reach the goal: that candidate's key. Each
    // pass keeps the range between the last of 16 thresholds that reaches it and the next.
    var lo = kmin;
    var hi = kmax;
    var first = true;
    loop {
        let step = (hi - lo) / 16u + 1u;
        let t = totals16(lid, row, count, cut, lo, step);
        if first && !reached(t[0].x, goal, strict) { return vec2(0u, 0xffffffffu); }
        first = false;
        var j = 0u;
        for (var c = 1u; c < 16u; c++) {
            if c * step <= hi - lo && reached(t[c / 4u][c % 4u], goal, strict) { j = c; }
        }
        if j < 15u && (j + 1u) * step <= hi - lo { hi = lo + (j + 1u) * step - 1u; }
        lo += j * step;
        if lo >= hi { break; }
    }
    // Its id: the smallest id among those tied at that key where the running total reaches it.
    var above = 0.0;
    if lo < 0xffffffffu { above = total_ge(lid, row, count, cut, lo + 1u); }
    var first_id = 0xffffffffu;
    var last_id = 0u;
    for (var i = lid; i < p.vocab; i += WG) {
        let k = key(logits[p.logits_off + row * p.vocab + i]);
        if k == lo && at_or_before(k, i, cut.x, cut.y) {
            first_id = min(first_id, i);
            last_id = max(last_id, i);
        }
    }
    var a = uniform_min_u(lid, first_id);
    var b = uniform_max_u(lid, last_id);
    while a < b {
        let mid = a + (b - a) / 2u;
        let q = above + total_tied(lid, row, count, cut, lo, mid);
        if reached(q, goal, strict) { b = mid; } else { a = mid + 1u; }
    }
    return vec2(lo, a);
}

// Σ weight of candidates with key >= k.
fn total_ge(lid: u32, row: u32, count: bool, cut: vec2<u32>, k: u32) -> f32 {
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let kk = key(logits[p.logits_off + row * p.vocab + i]);
        if kk >= k && at_or_before(kk, i, cut.x, cut.y) { s += weight(row, i, count); }
    }
    return uniform_sum(lid, s);
}

@compute @workgroup_size(WG)
fn greedy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; } // uniform per workgroup, so barriers stay uniform
    let base = p.logits_off + r * p.vocab;
    var best = bitcast<f32>(0xff800000u); // -inf
    var at = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        if v > best || (v == best && i < at) { best = v; at = i; }
    }
    red_f[lid] = best;
    red_u[lid] = at;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let v = red_f[lid + s];
            let i = red_u[lid + s];
            if v > red_f[lid] || (v == red_f[lid] && i < red_u[lid]) { red_f[lid] = v; red_u[lid] = i; }
        }
        workgroupBarrier();
    }
    // Only NaNs: id 0, as the CPU's.
    if lid == 0u { ids[r] = select(red_u[0], 0u, red_u[0] >= p.vocab); }
}

@compute @workgroup_size(WG)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let base = p.logits_off + r * p.vocab;
    // The first candidate's logit, and the range of keys.
    var kmax = 0u;
    var kmin = 0xffffffffu;
    for (var i = lid; i < p.vocab; i += WG) {
        let k = key(logits[base + i]);
        kmax = max(kmax, k);
        kmin = min(kmin, k);
    }
    kmax = uniform_max_u(lid, kmax);
    kmin = uniform_min_u(lid, kmin);
    let kb = select(~kmax, kmax & 0x7fffffffu, (kmax & 0x80000000u) != 0u);
    let m = bitcast<f32>(kb);
    for (var i = lid; i < p.vocab; i += WG) {
        weights[r * p.vocab + i] = exp((logits[base + i] - m) / p.temperature);
    }
    var cut = vec2(0u, 0xffffffffu); // every candidate
    if p.top_k > 0u && p.top_k < p.vocab {
        cut = find(lid, r, true, cut, f32(p.top_k), false, kmin, kmax);
    }
    if p.top_p < 1.0 {
        let z = total_ge(lid, r, false, cut, 0u);
        let c = find(lid, r, false, cut, p.top_p * z, false, kmin, kmax);
        if c.y != 0xffffffffu { cut = c; }
    }
    let sum = total_ge(lid, r, false, cut, 0u);
    var pick = find(lid, r, false, cut, uniforms[r] * sum, true, kmin, kmax);
    if pick.y == 0xffffffffu {
        // Rounding put the draw past the total: the last candidate, as the CPU's.
        pick = find(lid, r, true, cut, total_ge(lid, r, true, cut, 0u), false, kmin, kmax);
    }
    if lid == 0u { ids[r] = min(pick.y, p.vocab - 1u); }
}
