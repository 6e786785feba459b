// What the FlashAttention kernels (flash_attention.wgsl, flash_attention_coop.wgsl) share, prepended
// to each: the parameters, the inputs' names, and the query blocks of the forward and dQ kernels.
struct Params {
    b: u32,
    hq: u32,
    hkv: u32,
    tq: u32,
    tk: u32,
    d: u32,
    causal: u32,    // 1: query t sees keys j <= t + shift
    shift: u32,     // tk - tq
    scale: f32,     // 1 / sqrt(d)
    q_off: u32,     // element offsets of the inputs
    k_off: u32,
    v_off: u32,
    do_off: u32,
    lse_off: u32,
    aux_off: u32,
    out2: u32,      // where the second output starts in out: LSE after O, delta after dQ, dV after dK
    q_hs: u32,      // element strides between heads and between positions of q, dO, O, dQ:
    q_rs: u32,      // [B, H, T, D]: T·D and D; [B, T, H, D]: D and H·D
    kv_hs: u32,     // the same for k, v, dK, dV
    kv_rs: u32,
    kv_bs: u32,     // element stride between batches of k and v (a KV cache holds more than tk rows)
}

@group(0) @binding(0) var<uniform> p: Params;

const BR: u32 = 64u; // rows a workgroup owns (queries; keys in dK/dV)
const NEG: f32 = -1.0e30;
const Q: u32 = 0u; // which input a kernel's loads read
const K: u32 = 1u;
const V: u32 = 2u;
const DO: u32 = 3u;
const AUX: u32 = 4u;

// Keys that queries before t_end can see.
fn key_end(t_end: u32) -> u32 {
    if p.causal == 1u { return min(p.tk, t_end + p.shift); }
    return p.tk;
}

// Element offsets (past the inputs' own) of row t of query head h, and of row j of kv head h, in
// batch b.
fn q_at(b: u32, h: u32, t: u32) -> u32 {
    return b * p.hq * p.tq * p.d + h * p.q_hs + t * p.q_rs;
}

fn kv_at(b: u32, h: u32, j: u32) -> u32 {
    return b * p.kv_bs + h * p.kv_hs + j * p.kv_rs;
}

// A query block of the forward and dQ kernels: workgroup (64 queries, head, batch), the blocks in
// reverse so that the longest (causal) rows start first.
struct Block {
    t0: u32,
    rows: u32,  // queries in the block
    at: u32,    // element offset of its first query in q, dO, O, dQ
    kv: u32,    // element offset of its kv head's first row
    row: u32,   // of LSE and delta, its first query
    keys: u32,  // keys its queries see
}

fn block(wid: vec3<u32>, nwg: vec3<u32>) -> Block {
    let t0 = (nwg.x - 1u - wid.x) * BR;
    let rows = min(BR, p.tq - t0);
    let kv = kv_at(wid.z, wid.y / (p.hq / p.hkv), 0u);
    let row = (wid.z * p.hq + wid.y) * p.tq + t0;
    return Block(t0, rows, q_at(wid.z, wid.y, t0), kv, row, key_end(t0 + rows));
}
