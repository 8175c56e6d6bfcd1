"""A crosstrain-trained LoRA adapter in Python: sentence-transformers' CrossEncoder(dir) loads it
with peft, and its raw scores are compared with `crosstrain predict` on the same pairs (and with
the model `crosstrain merge-adapter` wrote, when given).

usage: python scripts/check-lora-python.py BIN ADAPTER_DIR PAIRS.jsonl MAX_LENGTH [MERGED_DIR]
Needs sentence-transformers (6.3), peft and torch. Prints the largest differences; exits 1 above 1e-5.
"""
import json
import subprocess
import sys

import torch
from sentence_transformers import CrossEncoder

binary, adapter, pairs_file, max_length = sys.argv[1:5]
merged = sys.argv[5] if len(sys.argv) > 5 else None
rows = [json.loads(line) for line in open(pairs_file)]
pairs = [(row["query"], row["document"]) for row in rows]


def crosstrain_scores(model):
    out = subprocess.run([binary, "predict", "--model", model, "--pairs", pairs_file, "--max-length", max_length,
                          "--activation", "none", "--json"], capture_output=True, text=True, check=True).stdout
    return [row[0] for row in json.loads(out)]


model = CrossEncoder(adapter, max_length=int(max_length))
assert getattr(model[0].model, "peft_config", None), "CrossEncoder did not load the directory as a PEFT adapter"
theirs = model.predict(pairs, activation_fn=torch.nn.Identity()).tolist()
ours = crosstrain_scores(adapter)
worst = max(abs(a - b) for a, b in zip(ours, theirs))
print(f"adapter: {len(pairs)} pairs, max |crosstrain - CrossEncoder(peft)| = {worst:.2e}")
if merged:
    merged_ours = crosstrain_scores(merged)
    merged_theirs = CrossEncoder(merged, max_length=int(max_length)).predict(pairs, activation_fn=torch.nn.Identity()).tolist()
    worst_merged = max(abs(a - b) for a, b in zip(merged_theirs, theirs))
    print(f"merged: max |CrossEncoder(merged) - CrossEncoder(adapter)| = {worst_merged:.2e}, "
          f"max |crosstrain merged - crosstrain adapter| = {max(abs(a - b) for a, b in zip(merged_ours, ours)):.2e}")
    worst = max(worst, worst_merged)
sys.exit(1 if worst > 1e-5 else 0)
