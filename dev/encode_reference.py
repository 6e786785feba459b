"""Reference speed for `irontensor tokenize`: Hugging Face tokenizers' own batch encoding of the
same corpus, with the same tokenizer.json, documents split at blank lines as ours are.
Pinned: Python 3, tokenizers 0.23.3. Usage: python3 dev/encode_reference.py RUN/tokenizer.json FILE.txt
"""
import resource
import sys
import time

from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
path = sys.argv[2]
start = time.time()
total_bytes = 0
tokens = 0
batch = []
batch_bytes = 0


def flush():
    global tokens, batch, batch_bytes
    if batch:
        tokens += sum(len(e.ids) + 1 for e in tok.encode_batch_fast(batch, add_special_tokens=False))
    batch, batch_bytes = [], 0


with open(path, "rb") as f:
    doc = []
    for raw in f:
        total_bytes += len(raw)
        if raw.strip():
            doc.append(raw.decode("utf-8"))
            continue
        if doc:
            text = "".join(doc)
            batch.append(text)
            batch_bytes += len(text)
            doc = []
            if batch_bytes >= 1 << 20:
                flush()
    if doc:
        batch.append("".join(doc))
    flush()
secs = time.time() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"python tokenizers encode_batch_fast: {total_bytes / 1e6:.1f} MB, {tokens} tokens in {secs:.1f}s "
      f"= {total_bytes / 1e6 / secs:.1f} MB/s, peak RSS {rss:.0f} MB")
