"""One command, one machine: runs `irontensor bench` and dev/bench_torch.py on the same
workloads and kernels, one after the other, and prints IronTensor / PyTorch ratios.

    python3 dev/bench_compare.py --device cpu --what train:shakespeare --batch 8
    python3 dev/bench_compare.py --device gpu --bf16 --json results.jsonl

--what takes train:WORKLOAD, matmul, attention, cross-entropy (comma separated; default all).
--repeat N alternates the two N times and keeps each side's best, which steadies a shared
machine. Ratios above 1 favour IronTensor (throughput ours/theirs, time theirs/ours); memory
is ours/theirs (below 1 favours us). GPU memory compares tensor peaks (ours: the pool's live
bytes; PyTorch: max_memory_allocated); CPU memory compares the growth of peak RSS over the
process's RSS before the model was built.
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
KERNELS = ("matmul", "attention", "cross-entropy")
KEYS = {
    "train": ("workload", "batch", "seq"),
    "matmul": ("m", "n", "k"),
    "attention": ("mode", "b", "h", "t", "d", "causal"),
    "cross_entropy": ("mode", "n", "c", "v"),
}


def default_bin():
    for path in (os.environ.get("IRONTENSOR_BIN"), os.path.join(ROOT, ".dev/bin/irontensor"),
                 os.path.join(ROOT, "target/release/irontensor")):
        if path and os.path.exists(path):
            return path
    raise SystemExit("no irontensor binary: build with `cargo build --release`, or pass --bin")


def run(cmd, env=None):
    """Runs `cmd` (stderr passes through) and returns its JSON result lines."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def key(r):
    return (r["bench"],) + tuple(r.get(k) for k in KEYS[r["bench"]])


def better(a, b):
    """The better of two results for the same key (higher throughput, lower time)."""
    if a is None:
        return b
    if "tokens_per_s" in a and a["bench"] == "train":
        return a if a["tokens_per_s"] >= b["tokens_per_s"] else b
    return a if a["ms"] <= b["ms"] else b


def commands(args, item):
    """(ours, pytorch) argument lists for one --what item."""
    if item.startswith("train:"):
        common = ["train", "--workload", item.split(":", 1)[1], "--device", args.device,
                  "--steps", str(args.steps), "--warmup", str(args.warmup)]
        for flag in ("batch", "seq", "optimizer"):
            if getattr(args, flag):
                common += [f"--{flag}", str(getattr(args, flag))]
        if args.no_split:
            common.append("--no-split")
    elif item in KERNELS:
        common = [item, "--device", args.device]
        if args.shapes:
            common += ["--shapes", args.shapes]
    else:
        raise SystemExit(f"--what {item!r}: expected train:seed-tiny, train:shakespeare, train:llama-1b, train:llama-8b, {', '.join(KERNELS)}")
    theirs = [sys.executable, os.path.join(HERE, "bench_torch.py")] + common
    if args.threads:
        theirs += ["--threads", str(args.threads)]
    return [args.bin, "bench"] + common, theirs


def mib(x):
    return f"{x / 2**20:.1f}" if isinstance(x, (int, float)) else "-"


def memory(r, device):
    if device == "gpu":
        return r.get("peak_bytes")
    if r.get("rss_peak_bytes") is not None and r.get("rss_base_bytes") is not None:
        return r["rss_peak_bytes"] - r["rss_base_bytes"]
    return None


def ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def report(ours, theirs, label, device):
    print(f"\n## IronTensor vs PyTorch {label} ({device})")
    for k, o in ours.items():
        t = theirs.get(k)
        if t is None:
            continue
        if k[0] == "train":
            if o["params"] != t["params"]:
                print(f"!! parameter counts differ: ours {o['params']}, PyTorch {t['params']}")
            mo, mt = memory(o, device), memory(t, device)
            print(f"train {o['workload']} batch {o['batch']}x{o['seq']} ({o['params'] / 1e6:.2f}M params, "
                  f"{o['optimizer']}): {o['tokens_per_s']:.0f} vs {t['tokens_per_s']:.0f} tokens/s = "
                  f"x{ratio(o['tokens_per_s'], t['tokens_per_s'])}; ms/step {o['ms_per_step']:.1f} vs "
                  f"{t['ms_per_step']:.1f}; memory {mib(mo)} vs {mib(mt)} MiB = x{ratio(mo, mt)}")
            if o.get("cpu_ms_per_step") and t.get("cpu_ms_per_step"):
                print(f"    CPU time (all threads) ms/step: {o['cpu_ms_per_step']} vs {t['cpu_ms_per_step']} = "
                      f"x{ratio(t['cpu_ms_per_step'], o['cpu_ms_per_step'])}")
            if o.get("expected_bytes"):
                print(f"    ours: peak {mib(o['peak_bytes'])} MiB = x{o['peak_over_expected']} of weights+grads+"
                      f"optimizer+activations ({mib(o['expected_bytes'])} MiB)")
            if "forward_ms" in o and "forward_ms" in t:
                print("    split fwd/bwd/opt ms: ours " + "/".join(str(o[p]) for p in ("forward_ms", "backward_ms",
                      "optimizer_ms")) + ", PyTorch " + "/".join(str(t[p]) for p in ("forward_ms", "backward_ms",
                                                                                         "optimizer_ms")))
        else:
            shape = " ".join(f"{n}={o.get(n)}" for n in KEYS[k[0]])
            print(f"{k[0]} {shape}: {o['ms']:.3f} vs {t['ms']:.3f} ms = x{ratio(t['ms'], o['ms'])} "
                  f"({o['gflops']} vs {t['gflops']} GFLOP/s)")


def alternations(lines):
    """Each training workload's ratio in every alternation (ours, then PyTorch FP32, in one
    call) and their median: on a shared machine the ratio moves far less than either speed."""
    pairs = {}
    for r in lines:
        if r["bench"] == "train" and r.get("precision") in ("f32", None):
            pairs.setdefault(key(r), {}).setdefault(r["impl"], []).append(r)
    for k, sides in pairs.items():
        ours, theirs = sides.get("irontensor", []), sides.get("pytorch", [])
        n = min(len(ours), len(theirs))
        if n < 2:
            continue
        tok = sorted(o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(ours, theirs))
        cpu = sorted(t["cpu_ms_per_step"] / o["cpu_ms_per_step"] for o, t in zip(ours, theirs)
                     if o.get("cpu_ms_per_step") and t.get("cpu_ms_per_step"))
        mid = lambda v: (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2
        line = f"{k[1]} batch {k[2]}: {n} alternations, tokens/s ratios " + ", ".join(f"{x:.2f}" for x in tok)
        line += f", median x{mid(tok):.2f}"
        if cpu:
            line += f"; CPU time ratios median x{mid(cpu):.2f}"
        print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="gpu", choices=("cpu", "gpu"))
    p.add_argument("--what", default="train:seed-tiny,train:shakespeare," + ",".join(KERNELS))
    p.add_argument("--bin", default=None, help="irontensor binary (default: .dev/bin or target/release)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--optimizer", choices=("lion", "adamw"))
    p.add_argument("--shapes", help="kernel shapes (only with a single kernel in --what)")
    p.add_argument("--no-split", action="store_true")
    p.add_argument("--bf16", action="store_true", help="also run PyTorch under bf16 autocast")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--json", help="append every result line to this file")
    p.add_argument("--threads", type=int, help="CPU threads for both (RAYON_NUM_THREADS, torch.set_num_threads)")
    args = p.parse_args()
    args.bin = args.bin or default_bin()
    sides = {"ours": {}, "pytorch f32": {}, "pytorch bf16": {}}
    lines = []
    env = dict(os.environ)
    if args.threads:
        env["RAYON_NUM_THREADS"] = str(args.threads)
    for item in args.what.split(","):
        ours_cmd, torch_cmd = commands(args, item.strip())
        for _ in range(args.repeat):
            runs = [("ours", ours_cmd), ("pytorch f32", torch_cmd)]
            if args.bf16:
                runs.append(("pytorch bf16", torch_cmd + ["--bf16"]))
            for side, cmd in runs:
                for r in run(cmd, env):
                    lines.append(r)
                    sides[side][key(r)] = better(sides[side].get(key(r)), r)
    if args.json:
        with open(args.json, "a") as f:
            for r in lines:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    report(sides["ours"], sides["pytorch f32"], "FP32 eager (TF32 off)", args.device)
    alternations(lines)
    if args.bf16:
        report(sides["ours"], sides["pytorch bf16"], "bf16 autocast eager", args.device)


if __name__ == "__main__":
    main()
