"""Writes the transformers-made test fixtures under tests/fixtures/ (run by hand; the outputs are
committed). Pinned: the torch and transformers of the machine that made them (printed and saved in
each fixture's expected.json).

    python3 dev/make_fixtures.py OUT_DIR     # then copy OUT_DIR/* to tests/fixtures/

llama-tiny/: a random LlamaForCausalLM (vocab 320, hidden 64, 2 layers, 4 heads, 2 KV heads,
SwiGLU 160, untied, RoPE base 10000) saved with save_pretrained (config.json,
model.safetensors, f32), and expected.json: fixed token ids and transformers' logits for them
(eager attention, f32), which tests/gguf.rs compares with ours.
"""
import json
import os
import sys

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def llama_tiny(out):
    cfg = LlamaConfig(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=160, max_position_embeddings=128,
                      rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      attn_implementation="eager")
    torch.manual_seed(20261203)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # norms away from 1, so a missing norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out, safe_serialization=True)
    tokens = [(i * 29 + 3) % 320 for i in range(17)]
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0]
    json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "tokens": tokens,
               "logits": [[round(float(v), 7) for v in row] for row in logits]},
              open(os.path.join(out, "expected.json"), "w"))


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    out = os.path.join(root, "llama-tiny")
    os.makedirs(out, exist_ok=True)
    llama_tiny(out)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}: wrote {out}")


if __name__ == "__main__":
    main()
