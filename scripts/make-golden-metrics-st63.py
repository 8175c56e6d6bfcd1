#!/usr/bin/env python3
"""Re-runs the evaluator cases of tests/fixtures/golden_metrics.json (made with
sentence-transformers 6.2) through sentence-transformers 6.3's evaluators and writes
tests/fixtures/golden_metrics_st63.json in the same layout.

6.3 changed CrossEncoderRerankingEvaluator: the `base_*` metrics are computed on the
retriever's list alone (AP scaled by retrieved/all positives, ideal DCG over
min(positives, k)), positives missing from `documents` count in NDCG's ideal and AP's
scale when `always_rerank_positives` is false, an empty `documents` list is a list, and a
single candidate no longer raises. Usage (a Python with sentence-transformers 6.3):

    python scripts/make-golden-metrics-st63.py tests/fixtures/golden_metrics.json \
        tests/fixtures/golden_metrics_st63.json
"""
import json
import sys
from types import SimpleNamespace

import numpy as np
import sentence_transformers
from sentence_transformers.cross_encoder.evaluation import (
    CrossEncoderClassificationEvaluator,
    CrossEncoderCorrelationEvaluator,
    CrossEncoderRerankingEvaluator,
)


class FixedScores:
    """Stands for a CrossEncoder: `predict` returns the recorded float32 scores."""

    def __init__(self, lookup, num_labels=1):
        self.lookup = lookup
        self.num_labels = num_labels
        self.model_card_data = SimpleNamespace(set_evaluation_metrics=lambda *a, **k: None)

    def predict(self, pairs, **kwargs):
        return np.array([self.lookup(tuple(pair)) for pair in pairs], dtype=np.float32)


def run_reranking(case):
    samples = case["samples"]
    scores = case["doc_scores"]
    by_query = {}
    for sample, doc_scores in zip(samples, scores):
        by_query.setdefault(sample["query"], {}).update(doc_scores)
    model = FixedScores(lambda pair: by_query[pair[0]][pair[1]])
    kwargs = case["evaluator_kwargs"]
    evaluator = CrossEncoderRerankingEvaluator(samples=samples, **kwargs)
    try:
        result = evaluator(model)
        error = None
    except Exception as e:  # noqa: BLE001 - recorded as the reference's outcome
        result, error = None, f"{type(e).__name__}: {e}"
    out = {k: case[k] for k in ("id", "description", "evaluator_kwargs", "samples", "doc_scores")}
    out["result"] = None if result is None else {k: float(v) for k, v in result.items()}
    out["error"] = error
    out["primary_metric"] = evaluator.primary_metric
    out["config"] = evaluator.get_config_dict()
    return out


def main():
    source, target = sys.argv[1], sys.argv[2]
    golden = json.load(open(source))
    queries = {}
    for case in golden["reranking"]:
        # Queries must be unique per case for the lookup; they are in the 6.2 cases.
        seen = [s["query"] for s in case["samples"]]
        queries[case["id"]] = len(seen) == len(set(seen))
    reranking = [run_reranking(case) for case in golden["reranking"] if queries[case["id"]]]
    out = {
        "meta": {
            "versions": {
                "sentence-transformers": sentence_transformers.__version__,
                "numpy": np.__version__,
            },
            "source": "the reranking cases of golden_metrics.json (6.2), re-run through 6.3",
            "skipped": [k for k, v in queries.items() if not v],
        },
        "reranking": reranking,
    }
    json.dump(out, open(target, "w"), indent=1)
    print(f"{len(reranking)} reranking cases -> {target}")


if __name__ == "__main__":
    main()
