"""Checks src/ops/matmul_coop.wgsl's index arithmetic without a cooperative-matrix GPU.

Replays the kernel's staging, fragment loads (coopLoad = column-major, coopLoadT = row-major, as
naga writes them to SPIR-V) and both epilogues in numpy, one workgroup and subgroup at a time,
against an f64 product, for every transpose combination, edge tiles, batches and offsets.
Keep it in step with the shader. Usage: python3 dev/matmul_coop_sim.py (a few minutes).
"""
import numpy as np
BM, BN, BK, PAD = 128, 256, 16, 8

def coop_load(mem, ptr, stride, row_major):
    r, c = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    idx = ptr + (r * stride + c if row_major else c * stride + r)
    assert idx.max() < len(mem), (idx.max(), len(mem))
    return mem[idx].astype(np.float64)

def run(m, n, k, ta, tb, batch_a, batch_b, a_off, b_off):
    batch = max(batch_a, batch_b)
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, a_off + batch_a * m * k).astype(np.float16).astype(np.float32)
    b = rng.uniform(-1, 1, b_off + batch_b * k * n).astype(np.float16).astype(np.float32)
    a_bs = m * k if batch_a > 1 else 0
    b_bs = k * n if batch_b > 1 else 0
    c = np.full(batch * m * n, np.nan, np.float64)
    for wz in range(batch):
        for wy in range((m + BM - 1) // BM):
            for wx in range((n + BN - 1) // BN):
                m0, n0 = wy * BM, wx * BN
                a_base, b_base = a_off + wz * a_bs, b_off + wz * b_bs
                a_dims = (k, m) if ta else (m, k)
                a_cols = BM if ta else BK
                a_kdir = (1, 0) if ta else (0, 1)
                a_org = (0, m0) if ta else (m0, 0)
                a_step = 256 // a_cols
                b_dims = (n, k) if tb else (k, n)
                b_cols = BK if tb else BN
                b_kdir = (0, 1) if tb else (1, 0)
                b_org = (n0, 0) if tb else (0, n0)
                b_step = 256 // b_cols
                inside = m0 + BM <= m and n0 + BN <= n
                steps = (k + BK - 1) // BK
                full_steps = k // BK
                acc = np.zeros((8, 4, 4, 16, 16))
                As = np.zeros(3072); Bs = np.zeros(6144)
                for s in range(steps):
                    k0 = s * BK
                    check = (not inside) or s >= full_steps
                    ao = (a_org[0] + k0 * a_kdir[0], a_org[1] + k0 * a_kdir[1])
                    bo = (b_org[0] + k0 * b_kdir[0], b_org[1] + k0 * b_kdir[1])
                    As[:] = np.nan; Bs[:] = np.nan
                    for li in range(256):
                        sa = (li // a_cols, li % a_cols)
                        for i in range(8):
                            r = ao[0] + sa[0] + i * a_step; col = ao[1] + sa[1]
                            v = 0.0
                            if (not check) or (r < a_dims[0] and col < a_dims[1]):
                                idx = a_base + r * a_dims[1] + col
                                assert idx < len(a)
                                v = a[idx]
                            As[(sa[0] + i * a_step) * (a_cols + PAD) + sa[1]] = v
                        sb = (li // b_cols, li % b_cols)
                        for i in range(16):
                            r = bo[0] + sb[0] + i * b_step; col = bo[1] + sb[1]
                            v = 0.0
                            if (not check) or (r < b_dims[0] and col < b_dims[1]):
                                idx = b_base + r * b_dims[1] + col
                                assert idx < len(b)
                                v = b[idx]
                            Bs[(sb[0] + i * b_step) * (b_cols + PAD) + sb[1]] = v
                    for sg in range(8):
                        wm, wn = (sg // 4) * 64, (sg % 4) * 64
                        if ta:
                            fa = [coop_load(As, wm + 16 * x, BM + PAD, False) for x in range(4)]
                        else:
                            fa = [coop_load(As, (wm + 16 * x) * (BK + PAD), BK + PAD, True) for x in range(4)]
                        if tb:
                            fb = [coop_load(Bs, (wn + 16 * y) * (BK + PAD), BK + PAD, False) for y in range(4)]
                        else:
                            fb = [coop_load(Bs, wn + 16 * y, BN + PAD, True) for y in range(4)]
                        for x in range(4):
                            for y in range(4):
                                assert not np.isnan(fa[x]).any() and not np.isnan(fb[y]).any()
                                acc[sg, x, y] += fa[x] @ fb[y]
                c_base = wz * m * n
                if inside and n % 4 == 0:
                    for sg in range(8):
                        wm, wn = (sg // 4) * 64, (sg % 4) * 64
                        for x in range(4):
                            for y in range(4):
                                at = c_base + (m0 + wm + 16 * x) * n + n0 + wn + 16 * y
                                for r in range(16):
                                    c[at + r * n: at + r * n + 16] = acc[sg, x, y, r]
                else:
                    for x in range(4):
                        for y in range(4):
                            Cs = np.concatenate([acc[sg, x, y].reshape(-1) for sg in range(8)])
                            for li in range(256):
                                for j in range(8):
                                    row = m0 + (j // 4) * 64 + x * 16 + li // 16
                                    col = n0 + (j % 4) * 64 + y * 16 + li % 16
                                    if row < m and col < n:
                                        c[c_base + row * n + col] = Cs[j * 256 + li]
    # reference
    A = a[a_off:].astype(np.float64); B = b[b_off:].astype(np.float64)
    want = []
    for z in range(batch):
        az = A[z * a_bs: z * a_bs + m * k].reshape((k, m) if ta else (m, k))
        bz = B[z * b_bs: z * b_bs + k * n].reshape((n, k) if tb else (k, n))
        want.append((az.T if ta else az) @ (bz.T if tb else bz))
    want = np.concatenate([w.reshape(-1) for w in want])
    err = np.abs(c - want).max()
    assert err < 1e-9, (m, n, k, ta, tb, err)
    return err

for (m, n, k) in [(7, 33, 65), (129, 257, 17), (128, 256, 32), (128, 260, 16), (128, 258, 16), (256, 512, 48), (1, 1, 1)]:
    for ta in (False, True):
        for tb in (False, True):
            for (ba, bb, ao, bo) in [(1, 1, 0, 0), (2, 1, 3, 5), (1, 2, 0, 1)]:
                run(m, n, k, ta, tb, ba, bb, ao, bo)
    print("ok", m, n, k, flush=True)
