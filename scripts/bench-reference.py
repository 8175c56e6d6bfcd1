"""sentence-transformers' side of `crosstrain bench train` and `bench predict`, for a
same-machine comparison (the reference recipe of ../shared/reference/README.md).

    python3 scripts/bench-reference.py MODEL_DIR [--threads 2] [--from-config]

--from-config builds the weights from MODEL_DIR's config.json alone
(`AutoModelForSequenceClassification.from_config`, seed 12), for the config-only benchmark
models (the counterpart of `crosstrain bench ... --from-scratch`).

Prints two JSON lines: a training step (host/assets/bench_train_pairs.jsonl, batches of 16 in
file order, BinaryCrossEntropyLoss, AdamW lr 2e-5 fused, 3 untimed and 20 timed steps,
max_length 128) and predict (host/assets/bench_pairs.jsonl, batch 32), with tokenisation.
"""

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

ASSETS = Path(__file__).resolve().parent.parent / "host" / "assets"


def rows(name):
    return [json.loads(line) for line in (ASSETS / name).read_text().splitlines() if line.strip()]


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--from-config", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(12)

    model_dir = args.model
    if args.from_config:
        import shutil
        import tempfile
        from transformers import AutoConfig, AutoModelForSequenceClassification

        model_dir = tempfile.mkdtemp(prefix="bench-from-config-")
        network = AutoModelForSequenceClassification.from_config(
            AutoConfig.from_pretrained(args.model))
        network.save_pretrained(model_dir)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(args.model) / name).is_file():
                shutil.copy(Path(args.model) / name, Path(model_dir) / name)
    model = CrossEncoder(model_dir, max_length=128, device="cpu")
    loss = BinaryCrossEntropyLoss(model)
    optimizer = torch.optim.AdamW(model.model.parameters(), lr=2e-5, fused=True)
    train = rows("bench_train_pairs.jsonl")
    batches = [train[i:i + 16] for i in range(0, len(train), 16)]
    model.model.train()

    def step(batch):
        started = time.perf_counter()
        features = model.tokenizer([r["query"] for r in batch], [r["document"] for r in batch],
                                   padding=True, truncation="longest_first", max_length=128,
                                   return_tensors="pt")
        logits = model.model(**features).logits.view(-1)
        value = loss.bce_with_logits_loss(logits, torch.tensor([float(r["label"]) for r in batch]))
        forward = time.perf_counter()
        value.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        done = time.perf_counter()
        return forward - started, backward - forward, done - backward

    for batch in batches[:3]:
        step(batch)
    timed = [batches[(3 + i) % len(batches)] for i in range(20)]
    started = time.perf_counter()
    phases = [step(batch) for batch in timed]
    seconds = time.perf_counter() - started
    pairs = sum(len(b) for b in timed)
    print(json.dumps({
        "bench": "train", "engine": "sentence-transformers", "torch": torch.__version__,
        "pairs": pairs, "seconds": seconds, "pairs_per_second": pairs / seconds,
        "forward_s": sum(p[0] for p in phases) / len(phases),
        "backward_s": sum(p[1] for p in phases) / len(phases),
        "optimizer_s": sum(p[2] for p in phases) / len(phases),
        "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
    }))

    model.model.eval()
    pairs = [(r["query"], r["document"]) for r in rows("bench_pairs.jsonl")]
    model.predict(pairs[:32], batch_size=32)
    started = time.perf_counter()
    model.predict(pairs, batch_size=32)
    seconds = time.perf_counter() - started
    print(json.dumps({
        "bench": "predict", "engine": "sentence-transformers", "pairs": len(pairs),
        "seconds": seconds, "pairs_per_second": len(pairs) / seconds,
        "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
