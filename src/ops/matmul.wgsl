// Batched C = op(A) · op(B), op = optional transpose. 64×64 output tile per workgroup,
// 16×16 threads with 4×4 outputs each, K in steps of 16 through shared memory.
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ta: u32,    // A is stored [K, M]
    tb: u32,    // B is stored [N, K]
    a_off: u32,
    b_off: u32,
    a_bs: u32,  // batch strides in elements (0 = shared across the batch)
    b_bs: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

const TM: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> As: array<f32, 1024>; // [TK][TM]
var<workgroup> Bs: array<f32, 1024>; // [TK][TN]

fn load_a(batch: u32, row: u32, col: u32) -> f32 {
    if row >= p.m || col >= p.k { return 0.0; }
    let base = p.a_off + batch * p.a_bs;
    if p.ta == 1u { return a[base + col * p.m + row]; }
    return a[base + row * p.k + col];
}

fn load_b(batch: u32, row: u32, col: u32) -> f32 {
    if row >= p.k || col >= p.n { return 0.0; }
    let base = p.b_off + batch * p.b_bs;
    if p.tb == 1u { return b[base + col * p.k + row]; }
    return b[base + row * p.n + col];
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let batch = wid.z;
    let row0 = wid.y * TM;
    let col0 = wid.x * TM;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = li + e * 256u;
            // A tile: consecutive threads walk K when A is row-major, M when it is transposed.
            var mm = idx / TK;
            var kk = idx % TK;
            if p.ta == 1u { mm = idx % TM; kk = idx / TM; }
            As[kk * TM + mm] = load_a(batch, row0 + mm, k0 + kk);
            var bk = idx / TM;
            var bn = idx % TM;
            if p.tb == 1u { bk = idx % TK; bn = idx / TK; }
            Bs[bk * TM + bn] = load_b(batch, k0 + bk, col0 + bn);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = As[kk * TM + lid.y * 4u + i];
                bv[i] = Bs[kk * TM + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    let cbase = batch * p.m * p.n;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if row < p.m && col < p.n {
                c[cbase + row * p.n + col] = acc[i * 4u + j];
            }
        }
    }
}
