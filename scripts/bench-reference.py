"""sentence-transformers' side of `crosstrain bench train` and `bench predict`, for a
same-machine comparison (the reference recipe of ../shared/reference/README.md).

    python3 scripts/bench-reference.py MODEL_DIR [--threads 2] [--from-config] [--onnx] [--skip-train]
        [--lora-r R] [--steps 20] [--warmup-steps 3] [--skip-predict]

--from-config builds the weights from MODEL_DIR's config.json alone
(`AutoModelForSequenceClassification.from_config`, seed 12), for the config-only benchmark
models (the counterpart of `crosstrain bench ... --from-scratch`).

Prints two JSON lines: a training step (host/assets/bench_train_pairs.jsonl, batches of 16 in
file order, BinaryCrossEntropyLoss, AdamW lr 2e-5 fused, 3 untimed and 20 timed steps,
max_length 128) and predict (host/assets/bench_pairs.jsonl, batch 32), with tokenisation.

A decoder reranker's directory (config.json naming a *ForCausalLM architecture, with
sentence-transformers' Transformer + LogitScore modules) is built with
`AutoModelForCausalLM.from_config` into a copy of the directory, so its chat template, left
padding and LogitScore run as users run them; its batches go through `model.preprocess` and
`model(features)["scores"]`, as sentence-transformers' losses do, at max_length 256.

--lora-r R trains a PEFT LoRA adapter instead of the whole model (`model.add_adapter(LoraConfig(r=R,
lora_alpha=2R, target_modules="all-linear"))`, AdamW over the adapter only): the counterpart of
`crosstrain bench train --lora-r R`.

--onnx adds the path a Python user serves with on CPU: the model exported by torch.onnx and
run in ONNX Runtime, in float32 and after `onnxruntime.quantization.quantize_dynamic(
weight_type=QInt8)`, on the same 512 pairs, batch 32, longest first as CrossEncoder.predict
sorts them, `threads` intra-op threads (the counterpart of `crosstrain bench predict --backend
onnx [--onnx-file onnx/model_qint8_avx512_vnni.onnx]`; needs `pip install onnx onnxruntime`).
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
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--lora-r", type=int)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup-steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(12)

    model_dir = args.model
    config = json.loads((Path(args.model) / "config.json").read_text())
    decoder = any(name.endswith("ForCausalLM") for name in config.get("architectures", []))
    max_length = 256 if decoder else 128
    if args.from_config and decoder:
        import shutil
        import tempfile
        from transformers import AutoConfig, AutoModelForCausalLM

        model_dir = tempfile.mkdtemp(prefix="bench-from-config-")
        shutil.copytree(args.model, model_dir, dirs_exist_ok=True)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model)).save_pretrained(
            model_dir)
    elif args.from_config:
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
    model = CrossEncoder(model_dir, max_length=max_length, device="cpu")
    if args.lora_r:
        import transformers.integrations.peft as transformers_peft
        from peft import LoraConfig

        # transformers 5.25 asks for peft >= 0.22, which the package index does not have yet;
        # the reference's own LoRA runs lowered this gate the same way (its README).
        transformers_peft.check_peft_version = lambda min_version: None

        model.add_adapter(LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                     target_modules="all-linear"))
    loss = BinaryCrossEntropyLoss(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5, fused=True)
    train = rows("bench_train_pairs.jsonl")
    batches = [train[i:i + 16] for i in range(0, len(train), 16)]
    model.train()

    def step(batch):
        started = time.perf_counter()
        if decoder:
            features = model.preprocess([(r["query"], r["document"]) for r in batch])
            logits = model(features)["scores"].view(-1)
        else:
            features = model.tokenizer([r["query"] for r in batch],
                                       [r["document"] for r in batch], padding=True,
                                       truncation="longest_first", max_length=128,
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

    if args.skip_train:
        batches = []
    for batch in batches[:args.warmup_steps]:
        step(batch)
    timed = ([batches[(args.warmup_steps + i) % len(batches)] for i in range(args.steps)]
             if batches else [])
    started = time.perf_counter()
    phases = [step(batch) for batch in timed]
    seconds = time.perf_counter() - started
    pairs = sum(len(b) for b in timed)
    if timed:
      print(json.dumps({
        "bench": "train", "engine": "sentence-transformers", "torch": torch.__version__,
        "lora_r": args.lora_r, "trainable_parameters": sum(p.numel() for p in trainable),
        "pairs": pairs, "seconds": seconds, "pairs_per_second": pairs / seconds,
        "forward_s": sum(p[0] for p in phases) / len(phases),
        "backward_s": sum(p[1] for p in phases) / len(phases),
        "optimizer_s": sum(p[2] for p in phases) / len(phases),
        "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
      }))

    if args.skip_predict:
        return
    model.eval()
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
    if args.onnx:
        bench_onnx(model, pairs, args.threads)


def bench_onnx(model, pairs, threads):
    import tempfile

    import numpy as np
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    fp32 = folder / "model.onnx"
    names = ["input_ids", "attention_mask"]
    sample = model.tokenizer(["a query"], ["a document"], return_tensors="pt")
    if "token_type_ids" in sample:
        names.append("token_type_ids")
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    torch.onnx.export(model.model, tuple(sample[n] for n in names), str(fp32), input_names=names,
                      output_names=["logits"], dynamic_axes=axes, opset_version=17, dynamo=False)
    int8 = folder / "model_qint8.onnx"
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0] + pairs[i][1]))
    ordered = [pairs[i] for i in order]
    for label, path in (("float32", fp32), ("int8 quantize_dynamic", int8)):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def score(batch):
            features = model.tokenizer([q for q, _ in batch], [d for _, d in batch], padding=True,
                                       truncation="longest_first", max_length=128, return_tensors="np")
            return session.run(None, {n: features[n].astype(np.int64) for n in names})[0]

        score(ordered[:32])
        started = time.perf_counter()
        for i in range(0, len(ordered), 32):
            score(ordered[i:i + 32])
        seconds = time.perf_counter() - started
        print(json.dumps({
            "bench": "predict", "engine": "onnxruntime (python)", "model": label,
            "onnxruntime": onnxruntime.__version__, "pairs": len(ordered), "seconds": seconds,
            "pairs_per_second": len(ordered) / seconds, "threads": threads,
        }))


if __name__ == "__main__":
    main()
