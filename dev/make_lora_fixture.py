"""Writes tests/fixtures/llama-tiny-lora/ with PEFT (run by hand; the outputs are committed).
Pinned: torch 2.15.0, transformers 5.25.0, peft 0.21.2 (the versions are saved in expected.json).

    python3 dev/make_lora_fixture.py tests/fixtures

A LoRA adapter (rank 4, alpha 12, on q, v, o, up and down: k and gate left out, so a fused
projection with and without adapters shows) on the random tests/fixtures/llama-tiny model, with
random A and B (init_lora_weights=False, so the update is not zero), saved by PEFT's
save_pretrained; and expected.json: fixed tokens, PEFT's logits for them, the mean next-token
loss, and the gradients of that loss for some adapter tensors, which tests/lora.rs compares.
"""
import json
import os
import sys

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    base = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "llama-tiny")
    out = os.path.join(root, "llama-tiny-lora")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(424242)
    model = LlamaForCausalLM.from_pretrained(base, attn_implementation="eager").float()
    cfg = LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, init_lora_weights=False,
                     target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    tokens = [(i * 37 + 11) % 320 for i in range(19)]
    ids = torch.tensor([tokens])
    result = model(ids, labels=ids)
    result.loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None and ("layers.0.self_attn.q_proj" in name or "layers.1.mlp.down_proj" in name):
            grads[name.replace(".default", "")] = [round(float(v), 8) for v in p.grad.flatten()]
    model.peft_config["default"].base_model_name_or_path = "tests/fixtures/llama-tiny"
    model.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))  # PEFT's model card template: nothing of ours
    json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
               "tokens": tokens, "loss": float(result.loss.detach()),
               "logits": [[round(float(v), 7) for v in row] for row in result.logits[0].detach()],
               "grads": grads}, open(os.path.join(out, "expected.json"), "w"))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}: wrote {out}")


if __name__ == "__main__":
    main()
