// The prelude: `const WG` (written by Rust from gpu::WG) comes just before this.

// The flat index of a workgroup in a grid from `device::gpu::grid`, which spills x past 65535 into y.
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// The flat index of a thread of a 1-D kernel: WG threads a workgroup.
fn flat_thread(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG + lid;
}

// Workgroup tree reductions of one f32 a thread over the WG threads (WG a power of two). Every
// thread of the workgroup must call them; each gets the result. Entry points that never call
// them do not allocate `wg_red`.
var<workgroup> wg_red: array<f32, WG>;

fn workgroup_sum(lid: u32, v: f32) -> f32 {
    wg_red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { wg_red[lid] += wg_red[lid + s]; }
        workgroupBarrier();
    }
    let r = wg_red[0];
    workgroupBarrier(); // all have read wg_red[0] before the next call overwrites it
    return r;
}

fn workgroup_max(lid: u32, v: f32) -> f32 {
    wg_red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if lid < s { wg_red[lid] = max(wg_red[lid], wg_red[lid + s]); }
        workgroupBarrier();
    }
    let r = wg_red[0];
    workgroupBarrier();
    return r;
}

// Stochastic rounding to bf16 (optim/rounding.rs has the same hash): the optimizers' BF16 stores.
fn pcg(v: u32) -> u32 {
    let st = v * 747796405u + 2891336453u;
    let x = ((st >> ((st >> 28u) + 4u)) ^ st) * 277803737u;
    return (x >> 22u) ^ x;
}

fn noise(key: u32, i: u32) -> u32 {
    return pcg(pcg(i) ^ key);
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
