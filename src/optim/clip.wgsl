// Gradient clipping: sums of squares over fixed slices (one workgroup each), their total,
// and in-place scaling.
struct Params {
    n: u32,    // elements of x (sumsq, scale) or partial sums (total)
    off: u32,  // element offset of x
    base: u32, // slot of this tensor's first partial sum in part
    s: f32,    // scale factor
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<f32>;

const PER_GROUP: u32 = 4096u; // elements per workgroup; mod.rs/clip.rs uses the same
var<workgroup> sh: array<f32, 256>;

fn tree_sum(lid: u32) {
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s { sh[lid] += sh[lid + s]; }
        workgroupBarrier();
    }
}

// part[base + group] = sum of x² over the group's slice.
@compute @workgroup_size(256)
fn sumsq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let grp = wid.x + wid.y * nwg.x;
    let start = grp * PER_GROUP;
    if start >= p.n { return; }
    let end = min(start + PER_GROUP, p.n);
    var acc = 0.0;
    for (var i = start + lid; i < end; i += 256u) {
        let v = x[p.off + i];
        acc += v * v;
    }
    sh[lid] = acc;
    tree_sum(lid);
    if lid == 0u { part[p.base + grp] = sh[0]; }
}

// One workgroup: x[0] = x[1] + ... + x[n] (x is the buffer of partial sums).
@compute @workgroup_size(256)
fn total(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += 256u) {
        acc += x[1u + i];
    }
    sh[lid] = acc;
    tree_sum(lid);
    if lid == 0u { x[0] = sh[0]; }
}

@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if i >= p.n { return; }
    x[p.off + i] *= p.s;
}
