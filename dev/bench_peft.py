"""The PyTorch side of fine-tuning a 1B model, for `irontensor bench train --workload llama-3.2-1b`:
transformers' LlamaForCausalLM with Llama 3.2 1B's shapes (random weights), BF16 weights,
4 x 1024 random tokens a step, and either PEFT LoRA (rank 16, alpha 32, on q, k, v, o; AdamW on
the adapters) or full fine-tuning (AdamW, 8-bit from bitsandbytes when it is installed, else
torch's; gradient checkpointing on). One JSON line like bench_torch.py's ("impl": "pytorch+peft").
Pinned: the versions it ran with are printed in the line.

    python3 dev/bench_peft.py --mode lora|full [--checkpointing] [--steps 10 --warmup 3]
"""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("lora", "full"), default="lora")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    args = p.parse_args()
    dev = torch.device("cuda")
    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype=torch.bfloat16, device=dev)
    model.config.use_cache = False
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    optim = "adamw"
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if args.mode == "lora":
        import peft
        versions["peft"] = peft.__version__
        lora = peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lora)
        for n, prm in model.named_parameters():  # f32 adapters, as ours (PEFT keeps the base's dtype)
            if prm.requires_grad:
                prm.data = prm.data.float()
    model.train()
    params = [prm for prm in model.parameters() if prm.requires_grad]
    try:
        if args.mode != "full":
            raise ImportError
        import bitsandbytes as bnb
        optimizer = bnb.optim.AdamW8bit(params, lr=1e-5)
        optim, versions["bitsandbytes"] = "adamw8bit", bnb.__version__
    except ImportError:
        optimizer = torch.optim.AdamW(params, lr=2e-4 if args.mode == "lora" else 1e-5)
    gen = torch.Generator().manual_seed(1234)
    batches = [torch.randint(cfg.vocab_size, (args.batch, args.seq), generator=gen).to(dev) for _ in range(3)]

    def step(i):
        x = batches[i % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        value = loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return value

    first = step(0)
    for i in range(1, args.warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        last = step(i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "bench": "train", "impl": "pytorch+peft" if args.mode == "lora" else "pytorch", "workload": "llama-3.2-1b",
        "mode": args.mode, "optimizer": optim, "checkpointing": args.checkpointing, "batch": args.batch,
        "seq": args.seq, "params": sum(prm.numel() for prm in model.parameters()),
        "trainable_params": sum(prm.numel() for prm in params),
        "ms_per_step": round(statistics.median(times) * 1e3, 2), "loss_first": first, "loss_last": last,
        "peak_bytes": torch.cuda.max_memory_allocated(dev), "pool_bytes": torch.cuda.max_memory_reserved(dev),
        "versions": versions,
    }), flush=True)


if __name__ == "__main__":
    main()
