// Embedding lookup (a gather of weight rows) and its backward (a deterministic scatter-add), for
// a weight larger than one binding a block of rows per dispatch.
struct Params {
    n: u32,       // output elements: tokens * C (gather), V * C (scatter_add)
    cols: u32,    // C
    idx_off: u32, // element offset of ids (gather)
    src_off: u32, // element offset of weight (gather) or dy (scatter_add)
    bf16: u32,    // 1 if weight is packed bf16 (two per u32, element 2i in the low half)
    v0: u32,      // the first row of weight (gather) or dweight (scatter_add) in its bound window
    v1: u32,      // gather: the end of those rows (ids outside v0..v1 are another dispatch's)
    out_off: u32, // scatter_add: element offset of row v0 in out's window
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;  // ids, or token order grouped by id
@group(0) @binding(2) var<storage, read> src: array<u32>;  // weight or dy, as raw words
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> starts: array<u32>; // [V + 1]: tokens of id v are idx[starts[v]..starts[v+1]]


// out[tok, c] = weight[ids[tok], c]
@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    let id = idx[p.idx_off + i / p.cols];
    if id < p.v0 || id >= p.v1 { return; }
    let e = p.src_off + (id - p.v0) * p.cols + i % p.cols;
    if p.bf16 == 1u {
        let word = src[e / 2u];
        out[i] = bitcast<f32>(select(word << 16u, word & 0xffff0000u, e % 2u == 1u));
    } else {
        out[i] = bitcast<f32>(src[e]);
    }
}

// dweight[v, c] = Σ dy[tok, c] over the tokens with id v, in token order. One thread per
// (v, c) writes its element once (zero if v is absent): no atomics, no races.
@compute @workgroup_size(WG)
fn scatter_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    let v = p.v0 + i / p.cols;
    let c = i % p.cols;
    var acc = 0.0;
    for (var k = starts[v]; k < starts[v + 1u]; k++) {
        acc += bitcast<f32>(src[p.src_off + idx[k] * p.cols + c]);
    }
    out[p.out_off + i] = acc;
}
