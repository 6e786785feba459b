"""numpy's SGEMM on the same shapes as `irontensor bench matmul`, for a side-by-side ratio.

Usage: python3 dev/matmul_numpy.py 1024x1024x1024,4096x4096x1024
Prints one JSON line per shape (best of 5, after a warm-up), like the Rust bench.
"""
import json
import sys
import time

import numpy as np

shapes = sys.argv[1] if len(sys.argv) > 1 else "1024x1024x1024,4096x4096x1024"
rng = np.random.default_rng(0)
for shape in shapes.split(","):
    m, n, k = (int(v) for v in shape.split("x"))
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    print(json.dumps({"bench": "matmul", "device": "numpy", "m": m, "n": n, "k": k,
                      "best_ms": round(best * 1e3, 3), "gflops": round(2 * m * n * k / best / 1e9, 1)}))
