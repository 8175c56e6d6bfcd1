#!/usr/bin/env bash
# The device check for the CUDA build, run on a GPU machine from the repository root with
# target/gpu-bundle carried along (made by scripts/gpu-bundle.sh):
#   1. parity: the 24 parity pairs through the model on the CPU and on CUDA, fp32; the
#      largest logit difference must stay under 1e-3;
#   2. `crosstrain bench train --device cuda` and `bench predict --device cuda`;
#   3. the same two workloads in PyTorch/sentence-transformers, when the machine has them.
# Prints one JSON line (also written to $OUT/gpu-check.json when OUT is set); exits non-zero
# when parity fails or a step errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-target/gpu-bundle}
work=$(mktemp -d)
xz -dc "$bundle/crosstrain.xz" > "$work/crosstrain"
chmod +x "$work/crosstrain"
mkdir -p "$work/model"
cp "$bundle"/model/*.json "$work/model/"
xz -dc "$bundle/model/model.safetensors.xz" > "$work/model/model.safetensors"

# The CUDA libraries the binary was linked for: the driver's libcuda, and cuBLAS, cuRAND and
# NVRTC from the nvidia-* wheels installed beside PyTorch.
libs=$(python3 - <<'PY'
import glob, os, site, sys
bases = site.getsitepackages() + [site.getusersitepackages()] + sys.path
dirs = {os.path.dirname(p) for b in bases if os.path.isdir(b)
        for p in glob.glob(os.path.join(b, "nvidia", "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))
PY
)
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A soname the wheels ship under another version number is linked under the asked-for name.
mkdir -p "$work/shim"
for needed in $(ldd "$work/crosstrain" | awk '/not found/ {print $1}'); do
    stem=${needed%%.so*}
    found=$(IFS=:; for dir in $libs; do ls "$dir/$stem".so* 2>/dev/null || true; done | head -n 1)
    if [ -n "$found" ]; then ln -sf "$found" "$work/shim/$needed"; fi
done
export LD_LIBRARY_PATH="$work/shim:$LD_LIBRARY_PATH"
if ldd "$work/crosstrain" | grep -q "not found"; then
    ldd "$work/crosstrain" | grep "not found" >&2
    exit 1
fi

"$work/crosstrain" predict --model "$work/model" --pairs "$bundle/parity_pairs.jsonl" --json --device cpu > "$work/cpu.json"
"$work/crosstrain" predict --model "$work/model" --pairs "$bundle/parity_pairs.jsonl" --json --device cuda > "$work/cuda.json"
"$work/crosstrain" bench train --model "$work/model" --device cuda > "$work/bench_train.json"
"$work/crosstrain" bench predict --model "$work/model" --device cuda > "$work/bench_predict.json"

python3 - "$work" <<'PY'
import json, os, subprocess, sys, time
work = sys.argv[1]
load = lambda name: json.load(open(os.path.join(work, name)))
cpu, cuda = load("cpu.json"), load("cuda.json")
diff = max(abs(a - b) for ra, rb in zip(cpu, cuda) for a, b in zip(ra, rb))
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
result = {
    "check": "gpu", "gpu": gpu, "parity_pairs": len(cpu), "parity_max_abs_diff": diff,
    "parity_ok": diff < 1e-3,
    "crosstrain_train_pairs_per_second": load("bench_train.json").get("pairs_per_second"),
    "crosstrain_predict_pairs_per_second": load("bench_predict.json").get("pairs_per_second"),
}
try:  # PyTorch side by side, on the same model files and workloads.
    import torch
    from sentence_transformers import CrossEncoder
    model_dir = os.path.join(work, "model")
    pairs = [json.loads(l) for l in open("host/assets/bench_pairs.jsonl")]
    pairs = [(p.get("query", p.get("text_a")), p.get("document", p.get("text_b"))) for p in pairs]
    model = CrossEncoder(model_dir, device="cuda")
    model.model.float()  # the bundle's weights are f16 on disk; compare fp32 with fp32
    model.predict(pairs[:32], batch_size=32)
    torch.cuda.synchronize(); start = time.perf_counter()
    model.predict(pairs, batch_size=32)
    torch.cuda.synchronize()
    result["torch_predict_pairs_per_second"] = len(pairs) / (time.perf_counter() - start)
    rows = [json.loads(l) for l in open("host/assets/bench_train_pairs.jsonl")]
    network, tokenizer = model.model, model.tokenizer
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    def step(batch):
        features = tokenizer([r["query"] for r in batch], [r["document"] for r in batch],
                             padding=True, truncation="longest_first", max_length=128,
                             return_tensors="pt").to("cuda")
        labels = torch.tensor([float(r["label"]) for r in batch], device="cuda")
        loss = loss_fn(network(**features).logits.view(-1), labels)
        loss.backward(); optimizer.step(); optimizer.zero_grad()
    batches = [rows[i:i + 16] for i in range(0, len(rows), 16)]
    for batch in batches[:3]:
        step(batch)
    torch.cuda.synchronize(); start = time.perf_counter()
    timed = (batches * 2)[:20]
    for batch in timed:
        step(batch)
    torch.cuda.synchronize()
    result["torch_train_pairs_per_second"] = sum(map(len, timed)) / (time.perf_counter() - start)
except Exception as error:  # the check itself does not need PyTorch
    result["torch_error"] = repr(error)
line = json.dumps(result)
print(line)
if os.environ.get("OUT"):
    open(os.path.join(os.environ["OUT"], "gpu-check.json"), "w").write(line + "\n")
sys.exit(0 if result["parity_ok"] else 1)
PY
