// Reductions over rows (sum or max, with argmax), column sums, and their backward.
struct Params {
    rows: u32,
    cols: u32,  // row length; the last row may be cut short by n
    n: u32,     // elements of x
    x_off: u32,
    scale: f32, // applied to sums (1/cols for a mean)
    block: u32, // col_sum: rows summed into each output row
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> idx: array<u32>;

const NEG_INF: u32 = 0xff800000u;
var<workgroup> sh: array<f32, WG>;
var<workgroup> shi: array<u32, WG>;


// One workgroup per row: strided partial sums, then a tree in shared memory.
@compute @workgroup_size(WG)
fn row_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let start = r * p.cols;
    let end = min(start + p.cols, p.n);
    var acc = 0.0;
    for (var i = start + lid; i < end; i += WG) {
        acc += x[p.x_off + i];
    }
    let total = workgroup_sum(lid, acc);
    if lid == 0u { out[r] = total * p.scale; }
}

// Max of each row and the first index where it occurs.
@compute @workgroup_size(WG)
fn row_max(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = flat_group(wid, nwg);
    if r >= p.rows { return; }
    let start = r * p.cols;
    let end = min(start + p.cols, p.n);
    var best = bitcast<f32>(NEG_INF);
    var bi = 0xffffffffu;
    for (var i = start + lid; i < end; i += WG) {
        let v = x[p.x_off + i];
        if v > best || bi == 0xffffffffu { best = v; bi = i - start; }
    }
    sh[lid] = best;
    shi[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            let v = sh[lid + s];
            let j = shi[lid + s];
            // Larger value wins; on a tie the smaller index (empty slots hold index 0xffffffff).
            if j != 0xffffffffu && (shi[lid] == 0xffffffffu || v > sh[lid] || (v == sh[lid] && j < shi[lid])) {
                sh[lid] = v;
                shi[lid] = j;
            }
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[r] = sh[0];
        idx[r] = shi[0];
    }
}

// Column sums of blocks of rows: out[b, c] = Σ x[r, c] over rows r of block b (p.block rows each),
// in row order, one thread per (block, column).
@compute @workgroup_size(WG)
fn col_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    let blocks = max(1u, (p.rows + p.block - 1u) / p.block); // no rows: one row of zeros
    if i >= blocks * p.cols { return; }
    let c = i % p.cols;
    let r0 = i / p.cols * p.block;
    var acc = 0.0;
    for (var r = r0; r < min(r0 + p.block, p.rows); r++) {
        acc += x[p.x_off + r * p.cols + c];
    }
    out[i] = acc;
}

// Backward of row_sum: out[r, c] = x[r] * scale (x holds dy).
@compute @workgroup_size(WG)
fn expand(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    out[i] = x[p.x_off + i / p.cols] * p.scale;
}

// Backward of row_max: dy goes to the argmax of each row.
@compute @workgroup_size(WG)
fn max_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    let r = i / p.cols;
    out[i] = select(0.0, x[p.x_off + r], idx[r] == i % p.cols);
}
