#!/usr/bin/env python3
"""The reference's CrossEncoderNanoBEIREvaluator (sentence-transformers 6.3) on the NanoBEIR
directory `tests/nanobeir.rs` writes, with the tiny BERT cross-encoder: the numbers
`tests/fixtures/nanobeir_reference.json` holds. Usage:

    CROSSTRAIN_KEEP_NANOBEIR=/tmp/nanobeir cargo test --test nanobeir nanobeir_equals
    python scripts/make-nanobeir-reference.py /tmp/nanobeir tests/fixtures/models/tiny-bert-ce \
        tests/fixtures/nanobeir_reference.json
"""
import json
import os
import sys
import tempfile

# `datasets` caches a local directory by its path: a fresh cache, so edited files are read.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import sentence_transformers
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

CASES = [
    {"rerank_k": 100, "at_k": 10, "always_rerank_positives": True},
    {"rerank_k": 6, "at_k": 3, "always_rerank_positives": True},
    {"rerank_k": 8, "at_k": 5, "always_rerank_positives": False},
]


def main():
    data_dir, model_dir, target = sys.argv[1:4]
    model = CrossEncoder(model_dir, device="cpu")
    cases = []
    for kwargs in CASES:
        evaluator = CrossEncoderNanoBEIREvaluator(
            dataset_names=["msmarco", "nq"], dataset_id=data_dir, batch_size=32, **kwargs
        )
        result = evaluator(model)
        cases.append(
            {
                "kwargs": kwargs,
                "primary_metric": evaluator.primary_metric,
                "result": {k: float(v) for k, v in result.items()},
            }
        )
    out = {
        "meta": {"sentence-transformers": sentence_transformers.__version__, "model": "tiny-bert-ce"},
        "cases": cases,
    }
    json.dump(out, open(target, "w"), indent=1)
    print(f"{len(cases)} cases -> {target}")


if __name__ == "__main__":
    main()
