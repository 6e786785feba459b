"""PyTorch eager counterparts of `irontensor bench`: the same workloads, models and kernels,
with the same flags and the same JSON lines ("impl": "pytorch"), so dev/bench_compare.py can
put them side by side.

    python3 dev/bench_torch.py train --workload seed-tiny --device cpu --steps 20 --warmup 3
    python3 dev/bench_torch.py train --workload shakespeare --device gpu --bf16
    python3 dev/bench_torch.py matmul|attention|cross-entropy --device gpu [--shapes ...]
    python3 dev/bench_torch.py generate --workload gpt2-small --device gpu [--bf16] [--static [--compile]]
        [--batch N] [--temperature T --top-k K --top-p P]

The model is IronTensor's (src/nn/): Llama-style, RMSNorm, RoPE in the rotate-half convention,
SDPA causal attention, SwiGLU FFN, embedding tied to the output, dropout on the embedding and on
each residual branch. It prints its parameter count, which must equal ours. FP32 with TF32 off;
--bf16 runs the forward under bf16 autocast. Lion is written here (torch has none) as
IronTensor's optimizer applies it; AdamW is torch's (foreach where torch picks it). A step is
ours: forward, backward, read the loss, clip the global norm to 1, read it, update unless a
value is not finite.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")

# name: (vocab, hidden, layers, heads, kv heads, ffn, dropout, batch, seq, optimizer);
# src/bench/train.rs `workload` is the other copy of this table.
WORKLOADS = {
    "seed-tiny": (32000, 256, 4, 4, 4, 512, 0.0, 16, 256, "lion"),
    "shakespeare": (4096, 384, 6, 6, 6, 1024, 0.2, 64, 256, "adamw"),
    "gpt2-small": (32768, 768, 12, 12, 12, 2560, 0.0, 16, 1024, "adamw"),
    "llama-1b": (32768, 2048, 16, 32, 8, 8192, 0.0, 4, 1024, "adamw"),
    "llama-3.2-1b": (128256, 2048, 16, 32, 8, 8192, 0.0, 4, 1024, "adamw"),
    "llama-8b": (32768, 4096, 32, 32, 8, 14336, 0.0, 1, 1024, "lion"),
}
# RoPE base: 10000, and Llama 3's 500000 for the llama-* workloads; the 8B's output projection is
# its own matrix (untied), as in Llama 3 8B.
NORM_EPS = 1e-5


class Block(nn.Module):
    def __init__(self, c, heads, kv_heads, ffn, dropout):
        super().__init__()
        self.heads, self.kv_heads, self.d, self.p = heads, kv_heads, c // heads, dropout
        self.input_layernorm = nn.Parameter(torch.ones(c))
        self.q_proj = nn.Linear(c, c, bias=False)
        self.k_proj = nn.Linear(c, kv_heads * self.d, bias=False)
        self.v_proj = nn.Linear(c, kv_heads * self.d, bias=False)
        self.o_proj = nn.Linear(c, c, bias=False)
        self.post_attention_layernorm = nn.Parameter(torch.ones(c))
        self.gate_proj = nn.Linear(c, ffn, bias=False)
        self.up_proj = nn.Linear(c, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, c, bias=False)

    def forward(self, x, cos, sin):
        # x: [B, T, C]
        b, t, c = x.shape
        h = F.rms_norm(x, (c,), self.input_layernorm, NORM_EPS)
        q = rope(self.q_proj(h).view(b, t, self.heads, self.d), cos, sin).transpose(1, 2)
        k = rope(self.k_proj(h).view(b, t, self.kv_heads, self.d), cos, sin).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        a = self.o_proj(o.transpose(1, 2).reshape(b, t, c))
        x = x + F.dropout(a, self.p, self.training)
        h = F.rms_norm(x, (c,), self.post_attention_layernorm, NORM_EPS)
        m = self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return x + F.dropout(m, self.p, self.training)


def rope(x, cos, sin):
    # x: [B, T, H, D]; rotate-half: the first and second halves of D pair up.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Model(nn.Module):
    def __init__(self, vocab, c, layers, heads, kv_heads, ffn, dropout, max_seq, rope_base=10000.0, tied=True):
        super().__init__()
        self.lm_head = None if tied else nn.Parameter(torch.empty(vocab, c))
        self.p = dropout
        self.embed_tokens = nn.Embedding(vocab, c)
        self.layers = nn.ModuleList(Block(c, heads, kv_heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.Parameter(torch.ones(c))
        d = c // heads
        inv = rope_base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.outer(torch.arange(max_seq, dtype=torch.float64), inv)
        ang = torch.cat((ang, ang), dim=-1)[:, None, :]  # [T, 1, D]
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def loss(self, x, y):
        # x, y: [B, T] token ids; the output projection is the embedding unless untied.
        t = x.shape[1]
        h = F.dropout(self.embed_tokens(x), self.p, self.training)
        for layer in self.layers:
            h = layer(h, self.cos[:t], self.sin[:t])
        h = F.rms_norm(h, (h.shape[-1],), self.norm, NORM_EPS)
        logits = h @ (self.embed_tokens.weight if self.lm_head is None else self.lm_head).t()
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1))


class Lion:
    """IronTensor's Lion (src/optim): update = sign(0.9·m + 0.1·g), m = 0.99·m + 0.01·g (the
    paper's β1 = 0.9, β2 = 0.99), decoupled weight decay on matrices only. foreach ops."""

    def __init__(self, params, lr, weight_decay, betas=(0.9, 0.99)):
        self.params = list(params)
        self.decay = [p for p in self.params if p.dim() >= 2]
        self.lr, self.wd, self.betas = lr, weight_decay, betas
        self.m = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        grads = [p.grad for p in self.params]
        update = torch._foreach_mul(self.m, b1)
        torch._foreach_add_(update, grads, alpha=1 - b1)
        torch._foreach_sign_(update)
        torch._foreach_mul_(self.decay, 1 - self.lr * self.wd)
        torch._foreach_add_(self.params, update, alpha=-self.lr)
        torch._foreach_mul_(self.m, b2)
        torch._foreach_add_(self.m, grads, alpha=1 - b2)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def device_of(name):
    if name in ("gpu", "cuda"):
        return torch.device("cuda")
    if name in ("cpu", "auto"):
        return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu")
    raise SystemExit(f"unknown device {name!r}: expected cpu, gpu or auto")


def adapter(dev):
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA, torch {torch.__version__})"
    return f"cpu, {torch.get_num_threads()} threads (torch {torch.__version__})"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def process_memory():
    """(VmRSS, VmHWM) in bytes, or (None, None) off Linux."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))
    except (OSError, KeyError, ValueError):
        return None, None


def emit(d):
    print(json.dumps(d, sort_keys=True), flush=True)


def train(args):
    dev = device_of(args.device)
    vocab, c, layers, heads, kv, ffn, dropout, batch, seq, opt = WORKLOADS[args.workload]
    batch, seq, opt = args.batch or batch, args.seq or seq, args.optimizer or opt
    rss_base = process_memory()[0]
    torch.manual_seed(0)
    llama = args.workload.startswith("llama")
    model = Model(vocab, c, layers, heads, kv, ffn, dropout, max(seq, 256), 500000.0 if llama else 10000.0,
                  tied=args.workload != "llama-8b").to(dev).train()
    params = list(model.parameters())
    num_params = sum(p.numel() for p in params)
    print(f"pytorch model: {num_params} parameters", file=sys.stderr)
    decay = [p for p in params if p.dim() >= 2]
    if opt == "lion":
        optimizer = Lion(params, lr=2e-4, weight_decay=0.1)
    else:
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    gen = torch.Generator().manual_seed(1234)
    batches = [(torch.randint(vocab, (batch, seq), generator=gen).to(dev),
                torch.randint(vocab, (batch, seq), generator=gen).to(dev)) for _ in range(4)]

    loss_fn = torch.compile(model.loss) if args.compile else model.loss

    def forward(x, y):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            return loss_fn(x, y)

    phases = [0.0, 0.0, 0.0]

    def step(i, split=False):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = forward(x, y)
        if split:
            sync(dev)
        t1 = time.perf_counter()
        loss.backward()
        value = loss.item()
        t2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        if math.isfinite(value) and math.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if split:
            sync(dev)
            t3 = time.perf_counter()
            for k, dt in enumerate((t1 - t0, t2 - t1, t3 - t2)):
                phases[k] += dt
        return value

    first_loss = step(0)
    for i in range(1, args.warmup):
        step(i)
    sync(dev)
    state_bytes = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else None
    activation_bytes = None
    if dev.type == "cuda":
        held = [forward(*batches[0])]  # the loss keeps its graph's saved tensors alive
        sync(dev)
        activation_bytes = torch.cuda.memory_allocated(dev) - state_bytes
        held.clear()
        torch.cuda.reset_peak_memory_stats(dev)

    times = []
    start, cpu_start = time.perf_counter(), time.process_time()
    last_loss = first_loss
    for i in range(args.steps):
        t0 = time.perf_counter()
        last_loss = step(i)
        times.append(time.perf_counter() - t0)
    sync(dev)
    total = time.perf_counter() - start
    cpu_ms = (time.process_time() - cpu_start) / args.steps * 1e3
    rss_peak = process_memory()[1]
    if args.profile:
        with torch.profiler.profile() as prof:
            for i in range(args.steps):
                step(i)
            sync(dev)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    out = {
        "bench": "train", "impl": "pytorch", "workload": args.workload,
        "device": "gpu" if dev.type == "cuda" else "cpu", "adapter": adapter(dev),
        "precision": ("bf16-autocast" if args.bf16 else "f32") + ("+compile" if args.compile else ""), "optimizer": opt,
        "batch": batch, "seq": seq, "params": num_params, "steps": args.steps, "warmup": args.warmup,
        "ms_per_step": round(statistics.median(times) * 1e3, 3),
        "ms_per_step_mean": round(total / args.steps * 1e3, 3), "cpu_ms_per_step": round(cpu_ms, 1),
        "tokens_per_s": round(batch * seq * args.steps / total, 1),
        "loss_first": first_loss, "loss_last": last_loss,
        "peak_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "pool_bytes": torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else None,
        "state_bytes": state_bytes, "activation_bytes": activation_bytes,
        "rss_base_bytes": rss_base, "rss_peak_bytes": rss_peak,
    }
    if not args.no_split:
        t = time.perf_counter()
        for i in range(args.steps):
            step(i, split=True)
        per = lambda s: round(s / args.steps * 1e3, 3)  # noqa: E731
        out.update(forward_ms=per(phases[0]), backward_ms=per(phases[1]), optimizer_ms=per(phases[2]),
                   split_step_ms=per(time.perf_counter() - t),
                   split_mode="separate pass: the GPU is synchronised at every phase boundary; "
                              "ms_per_step is unsynchronised")
    emit(out)


def time_best(dev, f):
    """Seconds per call: batches sized to ~0.2 s, each ending in a sync; best of 5 (as ours)."""
    def batch(reps):
        t = time.perf_counter()
        for _ in range(reps):
            f()
        sync(dev)
        return (time.perf_counter() - t) / reps
    reps = max(1, min(100, int(0.2 / batch(1))))
    return min(batch(reps) for _ in range(5))


def shapes(text, n, form):
    out = []
    for s in text.split(","):
        d = [int(v) for v in s.split("x")]
        if len(d) != n:
            raise SystemExit(f"bad shape {s!r}: expected {form}")
        out.append(d)
    return out


def kernel_line(bench, dev, args, **fields):
    d = {"bench": bench, "impl": "pytorch", "device": "gpu" if dev.type == "cuda" else "cpu",
         "adapter": adapter(dev)}
    d.update(fields)
    emit(d)


def matmul(args):
    dev = device_of(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    for m, n, k in shapes(args.shapes, 3, "MxNxK"):
        a = torch.randn(m, k, device=dev, dtype=dtype)
        b = torch.randn(k, n, device=dev, dtype=dtype)
        s = time_best(dev, lambda: torch.matmul(a, b))
        kernel_line("matmul", dev, args, precision="bf16" if args.bf16 else "f32", m=m, n=n, k=k,
                    ms=round(s * 1e3, 4), gflops=round(2 * m * n * k / s / 1e9, 1))


def attention(args):
    dev = device_of(args.device)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    causal = not args.no_causal
    for b, h, t, d in shapes(args.shapes, 4, "BxHxTxD"):
        q, k, v, dout = (torch.randn(b, h, t, d, device=dev, dtype=dtype) for _ in range(4))
        fwd_flops = 4 * b * h * t * t * d * (0.5 if causal else 1.0)
        with torch.no_grad():
            fwd = time_best(dev, lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

        def both():
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            torch.autograd.grad(o, (qg, kg, vg), dout)
        s2 = time_best(dev, both)
        for mode, s, flops in (("forward", fwd, fwd_flops), ("forward_backward", s2, 3.5 * fwd_flops)):
            kernel_line("attention", dev, args, mode=mode, b=b, h=h, t=t, d=d, causal=causal,
                        ms=round(s * 1e3, 4), gflops=round(flops / s / 1e9, 1))


def cross_entropy(args):
    """Unfused, as PyTorch users write it: logits = hidden·Wᵀ, then F.cross_entropy."""
    dev = device_of(args.device)
    for n, c, v in shapes(args.shapes, 3, "NxCxV"):
        hidden = torch.randn(n, c, device=dev)
        weight = torch.randn(v, c, device=dev) * 0.02
        targets = torch.randint(v, (n,), device=dev)

        def loss(hd, w):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                return F.cross_entropy((hd @ w.t()).float(), targets)
        with torch.no_grad():
            fwd = time_best(dev, lambda: loss(hidden, weight))
        hg, wg = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        s2 = time_best(dev, lambda: torch.autograd.grad(loss(hg, wg), (hg, wg)))
        for mode, s, flops in (("forward", fwd, 2 * n * c * v), ("forward_backward", s2, 6 * n * c * v)):
            kernel_line("cross_entropy", dev, args, mode=mode, n=n, c=c, v=v, ms=round(s * 1e3, 4),
                        gflops=round(flops / s / 1e9, 1), tokens_per_s=round(n / s))


def generate(args):
    """transformers' LlamaForCausalLM of the workload's shape (random weights, as ours), greedy
    `generate` to a fixed length: prefill = the time of a 1-token generate, decode = the rest.
    --batch N decodes N random prompts together (tokens/s counts every row); --temperature > 0
    samples (top-k, top-p) instead of the greedy choice."""
    from transformers import LlamaConfig, LlamaForCausalLM
    dev = device_of(args.device)
    vocab, c, layers, heads, kv, ffn, _, _, _, _ = WORKLOADS[args.workload]
    llama = args.workload.startswith("llama")
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=c, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=ffn, max_position_embeddings=1024 if c >= 768 else 256,
                      rope_theta=500000.0 if llama else 10000.0, rms_norm_eps=NORM_EPS,
                      tie_word_embeddings=args.workload != "llama-8b")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = LlamaForCausalLM(cfg).to(dev, dtype).eval()
    if args.compile:
        model.forward = torch.compile(model.forward, mode="reduce-overhead")
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(vocab, (args.batch, args.prompt_tokens), generator=gen).to(dev)
    extra = {"cache_implementation": "static"} if args.static else {}
    if args.temperature > 0:
        extra.update(do_sample=True, temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p)
    else:
        extra.update(do_sample=False)

    def run(n):
        sync(dev)
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **extra)
        sync(dev)
        return time.perf_counter() - t, out.shape[1] - ids.shape[1]

    run(args.max_tokens)  # warm-up (and compilation)
    prefill = min(run(1)[0] for _ in range(3))
    total, made = run(args.max_tokens)
    emit({"bench": "generate", "impl": "pytorch", "workload": args.workload,
          "device": "gpu" if dev.type == "cuda" else "cpu", "adapter": adapter(dev),
          "precision": ("bf16" if args.bf16 else "f32") + ("+static" if args.static else "")
          + ("+compile" if args.compile else ""), "prompt_tokens": args.prompt_tokens,
          "max_tokens": args.max_tokens, "batch": args.batch, "temperature": args.temperature,
          "generated": made, "prefill_ms": round(prefill * 1e3, 3),
          "decode_tokens_per_s": round(args.batch * (made - 1) / (total - prefill), 1)})


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train")
    t.add_argument("--workload", default="seed-tiny", choices=sorted(WORKLOADS))
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--batch", type=int)
    t.add_argument("--seq", type=int)
    t.add_argument("--optimizer", choices=("lion", "adamw"))
    t.add_argument("--no-split", action="store_true")
    t.add_argument("--profile", action="store_true",
                   help="after the timed steps, as many again under torch.profiler; its table by op on stderr "
                        "(the counterpart of IRONTENSOR_PROFILE=1)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model's loss (forward and backward)")
    defaults = {"matmul": "1024x1024x1024,4096x4096x1024", "attention": "16x6x256x64,16x6x1024x64",
                "cross-entropy": "4096x384x4096,4096x384x32000"}
    kernels = {name: sub.add_parser(name) for name in defaults}
    for name, k in kernels.items():
        k.add_argument("--shapes", default=defaults[name])
    kernels["attention"].add_argument("--no-causal", action="store_true")
    g = sub.add_parser("generate")
    g.add_argument("--workload", default="shakespeare", choices=sorted(WORKLOADS))
    g.add_argument("--prompt-tokens", type=int, default=64)
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--static", action="store_true", help="a static KV cache")
    g.add_argument("--compile", action="store_true", help="torch.compile the forward (with --static)")
    g.add_argument("--batch", type=int, default=1, help="prompts decoded together")
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sample")
    g.add_argument("--top-k", type=int, default=0, help="with --temperature: keep the k most likely (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="with --temperature: nucleus (1: all)")
    for q in [t, g, *kernels.values()]:
        q.add_argument("--device", default="auto")
        q.add_argument("--bf16", action="store_true", help="bf16 autocast (kernels: bf16 inputs)")
        q.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": train, "generate": generate, "matmul": matmul, "attention": attention, "cross-entropy": cross_entropy}[args.what](args)


if __name__ == "__main__":
    main()
