"""Writes tests/fixtures/spm-tokenizer/ (run by hand; the outputs are committed): a tokenizer in
the style of Llama 2 / TinyLlama's (SentencePiece BPE as tokenizers converts it: "▁" for spaces
by normalizer, byte fallback to <0xXX> tokens, <s> added by the post-processor, no byte-level
pre-tokenizer), trained on the start of tests/data/tinyshakespeare.txt, and expected.json: texts
and the ids tokenizers 0.22 gives them, which tests/data.rs compares with ours.

    python3 dev/make_spm_tokenizer.py tests/fixtures
"""
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

TEXTS = [
    "ROMEO:\nWhat, ho! é ünïcödé 🙂 text\n\nJULIET:\nAy me!",
    "  leading spaces, trailing ones  \n\n\n",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40,
]


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "fixtures"
    out = os.path.join(root, "spm-tokenizer")
    os.makedirs(out, exist_ok=True)
    here = os.path.dirname(__file__)
    text = open(os.path.join(here, "..", "tests", "data", "tinyshakespeare.txt")).read()[:60000]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens)
    tok.train_from_iterator([text], trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = os.path.join(out, "tokenizer.json")
    tok.save(path)
    j = json.load(open(path))  # byte tokens are ordinary vocabulary in Llama 2's, not added tokens
    j["added_tokens"] = [a for a in j["added_tokens"] if not a["content"].startswith("<0x")]
    json.dump(j, open(path, "w"), ensure_ascii=False)
    tok = Tokenizer.from_file(path)
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
              open(os.path.join(out, "tokenizer_config.json"), "w"))
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in TEXTS]
    json.dump({"tokenizers": tokenizers.__version__, "cases": cases}, open(os.path.join(out, "expected.json"), "w"))
    print(f"tokenizers {tokenizers.__version__}: wrote {out}")


if __name__ == "__main__":
    main()
