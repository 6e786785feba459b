// F32 <-> BF16. BF16 is packed two to a u32 (element 2i in the low half), rounded to nearest even.
struct Params {
    n: u32,     // elements
    x_off: u32, // element offset of the input
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

fn to_bf16(bits: u32) -> u32 {
    if (bits & 0x7fffffffu) > 0x7f800000u { return (bits >> 16u) | 0x40u; } // NaN stays NaN
    return (bits + 0x7fffu + ((bits >> 16u) & 1u)) >> 16u;
}

// One thread per output word: two bf16 values.
@compute @workgroup_size(WG)
fn f32_to_bf16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let w = flat_thread(wid, nwg, lid);
    let i = 2u * w;
    if i >= p.n { return; }
    let lo = to_bf16(x[p.x_off + i]);
    var hi = 0u;
    if i + 1u < p.n { hi = to_bf16(x[p.x_off + i + 1u]); }
    out[w] = lo | (hi << 16u);
}

@compute @workgroup_size(WG)
fn bf16_to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = flat_thread(wid, nwg, lid);
    if i >= p.n { return; }
    let e = p.x_off + i;
    let word = x[e / 2u];
    out[i] = select(word << 16u, word & 0xffff0000u, e % 2u == 1u);
}
