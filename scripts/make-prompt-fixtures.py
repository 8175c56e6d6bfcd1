"""Reference scores of an encoder cross-encoder given a prompt, from sentence-transformers 6.3
(which prepends the prompt to the first text of each pair), for tests/fixtures/encoder_prompts.json.

    python3 scripts/make-prompt-fixtures.py > tests/fixtures/encoder_prompts.json

Needs sentence-transformers 6.3 and torch; run from the repository root.
"""

import json

import sentence_transformers
import torch
from sentence_transformers import CrossEncoder

PROMPT = "Search query: "
PAIRS = [
    ("how do plants make food", "Photosynthesis turns light, water and carbon dioxide into sugar."),
    ("how do plants make food", "The stock market closed higher on Friday."),
    ("who wrote hamlet", "Hamlet is a tragedy written by William Shakespeare."),
    ("café au lait", "Coffee with hot milk, as served in France."),
]

out = {"sentence_transformers": sentence_transformers.__version__, "prompt": PROMPT,
       "pairs": [list(p) for p in PAIRS], "models": {}}
for name in ("tiny-bert-ce", "tiny-bert-ce-3labels"):
    model = CrossEncoder(f"tests/fixtures/models/{name}")
    features = model.preprocess(PAIRS, prompt=PROMPT)
    with torch.no_grad():
        scores = model.predict(PAIRS, prompt=PROMPT, activation_fn=torch.nn.Identity(),
                               convert_to_numpy=True)
        plain = model.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    out["models"][name] = {
        "input_ids": [[int(t) for t, m in zip(row, mask) if m]
                      for row, mask in zip(features["input_ids"].tolist(),
                                           features["attention_mask"].tolist())],
        "scores": scores.reshape(len(PAIRS), -1).tolist(),
        "scores_without_prompt": plain.reshape(len(PAIRS), -1).tolist(),
    }
print(json.dumps(out, indent=1, ensure_ascii=False))
