#!/usr/bin/env python3
"""Checks a GGUF written by irontensor against llama.cpp itself (through llama-cpp-python).

Pinned: llama-cpp-python==0.3.36 (builds llama.cpp from source), gguf==0.19.0, numpy.
    pip install llama-cpp-python==0.3.36 gguf==0.19.0

Usage: python3 dev/gguf_llama_cpp.py MODEL.gguf EXPECTED.json
EXPECTED.json (written by tests/gguf.rs, `llama_cpp_agrees`) holds our side:
  type: "f32" | "f16" | "q8_0";  n_ctx;  probe_text, probe_ids: a text and our tokenization;
  prompt_ids, logits: a prompt and our logits for every position [T][V];
  greedy: our 32 greedy tokens after the prompt.
Checks: llama.cpp tokenizes probe_text as we do; f32: its logits are within 1e-3 relative
(max |diff| / max |ours|); q8_0: its 32 greedy tokens equal ours. Prints the figures; exits 1
on a failed check.
"""
import json
import sys

import gguf
import numpy as np
from llama_cpp import Llama

GGML_TYPE_F32 = 0


def field_str(reader, key):
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode()


def main():
    path, expected = sys.argv[1], sys.argv[2]
    want = json.load(open(expected))
    failures = []

    # The gguf package reads the file on its own: architecture and tensor types.
    reader = gguf.GGUFReader(path)
    arch = field_str(reader, "general.architecture")
    types = sorted({t.tensor_type.name for t in reader.tensors})
    print(f"gguf package: architecture {arch}, {len(reader.tensors)} tensors of types {types}")

    # The KV cache in f32 (llama.cpp's default is f16, which alone moves logits by ~2e-3).
    llm = Llama(model_path=path, n_ctx=want["n_ctx"], logits_all=True, verbose=False, n_threads=2, seed=0,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)

    ids = llm.tokenize(want["probe_text"].encode(), add_bos=False, special=True)
    same = ids == want["probe_ids"]
    print(f"tokenization of the probe text: {len(ids)} tokens, {'equal' if same else 'DIFFERENT'}")
    if not same:
        print(f"  llama.cpp: {ids}\n  ours:      {want['probe_ids']}")
        failures.append("tokenization")

    prompt = want["prompt_ids"]
    llm.reset()
    llm.eval(prompt)
    got = np.array(llm.scores[: len(prompt)], dtype=np.float64)
    ours = np.array(want["logits"], dtype=np.float64)
    rel = np.abs(got - ours).max() / np.abs(ours).max()
    print(f"logits for a {len(prompt)}-token prompt: max relative error {rel:.3e}")
    if want["type"] == "f32" and not rel <= 1e-3:
        failures.append(f"f32 logits relative error {rel:.3e} > 1e-3")

    greedy = []
    for _ in range(len(want["greedy"])):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    agree = next((i for i, (a, b) in enumerate(zip(greedy, want["greedy"])) if a != b), len(greedy))
    print(f"greedy tokens: {agree} of {len(greedy)} agree")
    if agree < len(greedy):
        print(f"  llama.cpp: {greedy}\n  ours:      {want['greedy']}")
        if want["type"] in ("f32", "q8_0"):
            failures.append("greedy tokens")

    if failures:
        print("FAILED: " + ", ".join(failures))
        sys.exit(1)
    print("llama.cpp agrees")


if __name__ == "__main__":
    main()
