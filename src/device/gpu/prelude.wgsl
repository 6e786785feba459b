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
