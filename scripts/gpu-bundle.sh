#!/usr/bin/env bash
# Prepares target/gpu-bundle/ for scripts/gpu-check.sh: the CUDA build of crosstrain
# (scripts/build-cuda.sh), a model in f16 and the 24 parity pairs, compressed. The whole
# trip to a GPU machine must stay under 64 MiB; f16 halves MiniLM-L6 and does not weaken the
# check, since the CPU and the GPU both read the same rounded weights.
#
#   bash scripts/gpu-bundle.sh [MODEL_DIR]   (default ../shared/reference/models/minilm-l6-ce)
# then, with the device tool: carry target/gpu-bundle, run `bash scripts/gpu-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/reference/models/minilm-l6-ce}
bundle=target/gpu-bundle

[ -x target/cuda/release/crosstrain ] || bash scripts/build-cuda.sh
rm -rf "$bundle"
mkdir -p "$bundle/model"
strip -o "$bundle/crosstrain" target/cuda/release/crosstrain
for file in config.json tokenizer.json tokenizer_config.json config_sentence_transformers.json; do
    if [ -f "$model/$file" ]; then cp "$model/$file" "$bundle/model/"; fi
done
python3 scripts/safetensors_f16.py "$model/model.safetensors" "$bundle/model/model.safetensors"
python3 - "$bundle/parity_pairs.jsonl" <<'PY'
import json, sys
pairs = json.load(open("tests/fixtures/model_parity.json"))["pairs"]
with open(sys.argv[1], "w") as f:
    for pair in pairs:
        f.write(json.dumps({"query": pair["query"], "document": pair["document"]}) + "\n")
PY
xz -T0 -6 "$bundle/crosstrain" "$bundle/model/model.safetensors"
du -ah "$bundle"
