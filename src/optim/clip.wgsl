// Gradient clipping: sums of squares over fixed slices (one workgroup each), their total and
// the step's decision (`control`), and in-place scaling.
struct Params {
    n: u32,    // elements of x (scale), partial sums (control) or segments (sumsq)
    off: u32,  // element offset of x (scale)
    base: u32, // sumsq: slot of the first segment's first partial sum in part
    s: f32,    // scale factor (scale), max_norm (control)
    inv: f32,  // control: 1 / loss scale (the gradients are the loss's times the loss scale)
}

// One tensor of a sumsq dispatch: where it starts in x, its length, and its first workgroup.
struct Segment {
    off: u32,
    n: u32,
    first: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<storage, read> seg: array<Segment>; // sorted by `first`

const PER_GROUP: u32 = 4096u; // elements per workgroup; clip.rs uses the same

// part[base + group] = sum of x² over the group's slice of its segment (the last segment
// whose first group is at or before it).
@compute @workgroup_size(WG)
fn sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let grp = flat_group(wid, nwg);
    var lo = 0u;
    var hi = p.n - 1u;
    while lo < hi {
        let mid = (lo + hi + 1u) / 2u;
        if seg[mid].first <= grp { lo = mid; } else { hi = mid - 1u; }
    }
    let sg = seg[lo];
    let start = (grp - sg.first) * PER_GROUP;
    if start >= sg.n { return; }
    let end = min(start + PER_GROUP, sg.n);
    var acc = 0.0;
    for (var i = start + lid; i < end; i += WG) {
        let v = x[sg.off + i];
        acc += v * v;
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u { part[p.base + grp] = total; }
}

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

// One workgroup decides the optimizer step (clip.rs `step_control`): from the partial sums
// x[4..4 + n] and the loss in x[3] it writes x[0] = gradient scale, x[1] = 1 if the step
// applies (loss and norm finite) else 0, x[2] = the global norm. p.s = max_norm (0: no clipping);
// the gradients are the loss scale's multiple, so the norm and the scale include p.inv.
@compute @workgroup_size(WG)
fn control(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        acc += x[4u + i];
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u {
        let norm = sqrt(total) * p.inv;
        let ok = finite(norm) && finite(x[3]);
        let coef = p.s / (norm + 1e-6);
        x[0] = select(1.0, coef, p.s > 0.0 && ok && coef < 1.0) * p.inv;
        x[1] = select(0.0, 1.0, ok);
        x[2] = norm;
    }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    x[p.off + i] *= p.s;
}
