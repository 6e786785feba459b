"""Writes the transformers-made test fixtures under tests/fixtures/ (run by hand; the outputs are
committed). Pinned: torch 2.15, transformers 5.25, tokenizers 0.23 (the versions of the machine
that made them, also saved in each fixture's expected.json).

    python3 dev/make_fixtures.py OUT_DIR [NAME...]  # then copy OUT_DIR/* to tests/fixtures/

llama-tiny/: a random LlamaForCausalLM (vocab 320, hidden 64, 2 layers, 4 heads, 2 KV heads,
SwiGLU 160, untied, RoPE base 10000) saved with save_pretrained (config.json,
model.safetensors, f32), and expected.json: fixed token ids and transformers' logits for them
(eager attention, f32), which tests/gguf.rs compares with ours.

llama3-tiny/: a Llama-3-style model: RoPE scaling "llama3" (factor 8, original context 16 of 64; its
frequencies fall in all three bands: kept, smoothed, divided),
head_dim 12 != hidden 32 / 4 heads, 2 KV heads, untied, stored in BF16. Its expected values are
transformers' in f32 on those BF16 weights.
qwen2-tiny/: a Qwen2ForCausalLM (q/k/v biases, tied embeddings, no sliding window), f32.
llama-bias-tiny/: a LlamaForCausalLM with attention_bias and mlp_bias, RoPE scaling "linear"
(factor 4), stored in F16 (no tokenizer).
The first two carry a small byte-level BPE tokenizer.json, tokenizer_config.json with a chat_template and
generation_config.json; all have expected.json: tokens, logits, the loss of predicting tokens[1:] from
tokens[:-1], and the gradients of a few parameters for that loss.
"""
import json
import os
import sys

import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


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


def tokenizer(out, eos, vocab):
    """A byte-level BPE of `vocab` entries trained on a little of tests/data/tinyshakespeare.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "..", "tests", "data", "tinyshakespeare.txt")).read()[:20000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    specials = [eos, "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    tok.save(os.path.join(out, "tokenizer.json"))
    json.dump({"eos_token": eos, "bos_token": None, "chat_template": CHAT_TEMPLATE,
               "model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"},
              open(os.path.join(out, "tokenizer_config.json"), "w"), indent=1)
    return tok.token_to_id(eos)


def expected(model, out, vocab, grads, n=13):
    """expected.json: logits of fixed tokens, the loss of tokens[1:] from tokens[:-1], gradients."""
    tokens = [(i * 37 + 5) % vocab for i in range(n)]
    model.zero_grad()
    logits = model(torch.tensor([tokens[:-1]])).logits[0]
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(tokens[1:]))
    loss.backward()
    params = dict(model.named_parameters())
    r = lambda v: float(f"{float(v):.7g}")
    json.dump({"torch": torch.__version__, "transformers": transformers.__version__, "tokens": tokens,
               "logits": [[r(v) for v in row] for row in logits.detach()], "loss": r(loss.detach()),
               "grads": {g: [r(v) for v in params[g].grad.flatten()] for g in grads}},
              open(os.path.join(out, "expected.json"), "w"))


def perturb_norms(model):
    with torch.no_grad():  # norms away from 1 and biases away from 0, so a missing one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.uniform_(-0.5, 0.5)


def llama3_tiny(out):
    vocab = 272
    eos = tokenizer(out, "<|end_of_text|>", vocab)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=12, intermediate_size=64, max_position_embeddings=64,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                       "low_freq_factor": 0.5, "high_freq_factor": 2.0,
                                       "original_max_position_embeddings": 16},
                      rms_norm_eps=1e-5, tie_word_embeddings=False, eos_token_id=eos, bos_token_id=None,
                      attn_implementation="eager")
    torch.manual_seed(20261204)
    model = LlamaForCausalLM(cfg).float().eval()
    perturb_norms(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    model = model.float()  # the BF16-rounded weights, computed in f32
    GenerationConfig(eos_token_id=eos, do_sample=False, max_new_tokens=16).save_pretrained(out)
    expected(model, out, vocab, ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                                 "model.norm.weight"], n=21)


def qwen2_tiny(out):
    vocab = 272
    eos = tokenizer(out, "<|endoftext|>", vocab)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, use_sliding_window=False, sliding_window=32, max_window_layers=1,
                      eos_token_id=eos, attn_implementation="eager")
    torch.manual_seed(20261205)
    model = Qwen2ForCausalLM(cfg).float().eval()
    perturb_norms(model)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(eos_token_id=eos, do_sample=False, max_new_tokens=16).save_pretrained(out)
    expected(model, out, vocab, ["model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.v_proj.bias",
                                 "model.layers.1.self_attn.k_proj.bias", "model.layers.1.self_attn.q_proj.weight",
                                 "model.norm.weight"])


def llama_bias_tiny(out):
    vocab = 96
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=24, max_position_embeddings=32,
                      rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
                      attention_bias=True, mlp_bias=True, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      attn_implementation="eager")
    torch.manual_seed(20261206)
    model = LlamaForCausalLM(cfg).float().eval()
    perturb_norms(model)
    model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    model = model.float()  # the F16-rounded weights, computed in f32
    expected(model, out, vocab, ["model.layers.0.self_attn.o_proj.bias", "model.layers.0.self_attn.q_proj.bias",
                                 "model.layers.0.mlp.gate_proj.bias", "model.layers.0.mlp.up_proj.bias",
                                 "model.layers.0.mlp.down_proj.bias"], n=23)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    for name, make in [("llama-tiny", llama_tiny), ("llama3-tiny", llama3_tiny), ("qwen2-tiny", qwen2_tiny),
                       ("llama-bias-tiny", llama_bias_tiny)]:
        if len(sys.argv) > 2 and name not in sys.argv[2:]:
            continue
        out = os.path.join(root, name)
        os.makedirs(out, exist_ok=True)
        make(out)
        print(f"torch {torch.__version__}, transformers {transformers.__version__}: wrote {out}")


if __name__ == "__main__":
    main()
