// Strided copy of 32-bit words: for each index of `shape`, dst[dst_off + idx·dst_st] = src[src_off + idx·src_st].
// Transpose, permute, slice, concat and their backward are all this one kernel.
struct Params {
    n: u32,
    rank: u32,
    src_off: u32,
    dst_off: u32,
    shape: array<vec4<u32>, 2>,
    src_st: array<vec4<u32>, 2>,
    dst_st: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    var rem = i;
    var s = p.src_off;
    var d = p.dst_off;
    for (var k = i32(p.rank) - 1; k >= 0; k--) {
        let dim = p.shape[k / 4][k % 4];
        let c = rem % dim;
        rem /= dim;
        s += c * p.src_st[k / 4][k % 4];
        d += c * p.dst_st[k / 4][k % 4];
    }
    dst[d] = src[s];
}
