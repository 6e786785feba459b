"""PyTorch's FP32 matmul on CUDA (cuBLAS, TF32 off) on the same shapes as `irontensor bench matmul`.

Usage: python3 dev/matmul_torch.py 1024x1024x1024,4096x4096x4096
Prints one JSON line per shape like dev/matmul_numpy.py and the Rust bench: the best of 5 timed
runs, each of enough products (~0.2 s) to hide launch and sync latency, after a warm-up.
"""
import json
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False  # true FP32, the precision IronTensor's SGEMM computes in
torch.backends.cudnn.allow_tf32 = False

shapes = sys.argv[1] if len(sys.argv) > 1 else "1024x1024x1024,4096x4096x4096"
gen = torch.Generator(device="cuda").manual_seed(0)
for shape in shapes.split(","):
    m, n, k = (int(v) for v in shape.split("x"))
    a = torch.randn(m, k, device="cuda", dtype=torch.float32, generator=gen)
    b = torch.randn(k, n, device="cuda", dtype=torch.float32, generator=gen)
    c = torch.empty(m, n, device="cuda", dtype=torch.float32)

    def run(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=c)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / reps

    run(3)  # warm-up: cuBLAS picks its kernel
    reps = max(1, min(100, int(0.2 / run(1))))
    best = min(run(reps) for _ in range(5))
    print(json.dumps({"bench": "matmul", "device": "cuda", "m": m, "n": n, "k": k,
                      "best_ms": round(best * 1e3, 3), "gflops": round(2 * m * n * k / best / 1e9, 1)}))
