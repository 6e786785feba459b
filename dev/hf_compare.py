"""Checks that transformers' LlamaForCausalLM gives our logits for the same weights.

Usage: cargo run --release --example export_for_hf -- DIR && python3 dev/hf_compare.py DIR
Needs torch, transformers and safetensors. Prints the max absolute logit difference.
"""
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

d = sys.argv[1] if len(sys.argv) > 1 else "hf_export"
model = LlamaForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
want = load_file(f"{d}/expected.safetensors")
tokens = want["tokens"].to(torch.int64)
with torch.no_grad():
    got = model(tokens).logits
ours = want["logits"]
diff = (got - ours).abs().max().item()
print(f"logits {tuple(got.shape)}: max |transformers - irontensor| = {diff:.3e} (logit scale {ours.abs().max().item():.2f})")
sys.exit(0 if diff < 1e-3 else 1)
