"""Writes tests/fixtures/chat/: a small byte-level BPE tokenizer.json (320 tokens, the special tokens
of the four chat formats), and expected.json: for each template in tests/fixtures/chat/*.jinja and
each conversation below, transformers' apply_chat_template text and ids, and which tokens are the
assistant's. Pinned: python 3.11, torch 2.15, transformers 5.25, tokenizers 0.23.3.

    python3 dev/make_chat_fixtures.py      # from the repository root

The templates are those SmolLM2-Instruct, Llama 3.1-Instruct, Qwen2.5-Instruct and
TinyLlama-1.1B-Chat-v1.0 ship in tokenizer_config.json, written out by hand (no network here).
An assistant message's tokens: render the conversation before it with add_generation_prompt and the
conversation up to it without; the characters between the two renderings are the assistant's, and a
token whose character span overlaps them counts (offsets from the fast tokenizer).
"""
import glob
import json
import os

import tokenizers
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
from transformers import PreTrainedTokenizerFast

DIR = "tests/fixtures/chat"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
           "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>"]
# (bos, eos) as each model's tokenizer_config.json names them.
TOKENS = {"smollm2": ("<|im_start|>", "<|im_end|>"), "llama3.1": ("<|begin_of_text|>", "<|eot_id|>"),
          "qwen2.5": (None, "<|im_end|>"), "tinyllama": ("<s>", "</s>")}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "system", "content": "  Answer briefly, in verse. "},
     {"role": "user", "content": "Wer bist du? ünïcode 🦀"},
     {"role": "assistant", "content": " I am a model,\nnot a man. "},
     {"role": "user", "content": "And then?"},
     {"role": "assistant", "content": "Then I stop."}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
     {"role": "user", "content": "bye"}],
]


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = open("tests/data/tinyshakespeare.txt").read()[:200000]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    return tok


def ids_of(out):
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def case(hf, template, messages):
    kw = {"chat_template": template}
    text = hf.apply_chat_template(messages, tokenize=False, **kw)
    ids = ids_of(hf.apply_chat_template(messages, tokenize=True, **kw))
    enc = hf(text, add_special_tokens=False, return_offsets_mapping=True)
    assert enc["input_ids"] == ids, "apply_chat_template's ids are those of its text"
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = hf.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True, **kw)
        upto = hf.apply_chat_template(messages[:i + 1], tokenize=False, **kw)
        assert text.startswith(upto) and upto.startswith(before)
        spans.append((len(before), len(upto)))
    mask = [int(any(s < e1 and e > s1 for s1, e1 in spans)) for s, e in enc["offset_mapping"]]
    prompt = hf.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True, **kw)
    return {"messages": messages, "text": text, "ids": ids, "mask": mask, "prompt": prompt}


def main():
    tok = train_tokenizer()
    tok.save(os.path.join(DIR, "tokenizer.json"))
    cases = []
    for path in sorted(glob.glob(os.path.join(DIR, "*.jinja"))):
        name = os.path.basename(path)[:-len(".jinja")]
        bos, eos = TOKENS[name]
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
        template = open(path).read()
        for messages in CONVERSATIONS:
            cases.append({"template": name, "bos": bos, "eos": eos, **case(hf, template, messages)})
    versions = {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__}
    json.dump({"versions": versions, "cases": cases}, open(os.path.join(DIR, "expected.json"), "w"),
              ensure_ascii=False, indent=1)
    print(f"{versions}: wrote {len(cases)} cases to {DIR}")


if __name__ == "__main__":
    main()
