#!/usr/bin/env bash
# Copies the reference's tiny models and numbers that the project's tests use from the shared
# reference folder (made with transformers / sentence-transformers; see its README) into
# tests/fixtures, so that the tests run without the shared folder.
# Usage: bash scripts/copy-reference-fixtures.sh [SHARED_DIR]   (default: ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared}
reference="$shared/reference"
for model in tiny-bert-ce tiny-bert-ce-3labels tiny-xlmr-ce tiny-electra-ce tiny-modernbert-ce \
    tiny-modernbert-mean-ce tiny-deberta-v2-ce tiny-qwen3-reranker tiny-qwen3-seqcls \
    tiny-qwen2-reranker tiny-qwen3-reranker-lora-random-init tiny-qwen3-reranker-lora-default-init \
    tiny-qwen3-reranker-lora-trained; do
    rm -rf "tests/fixtures/models/$model"
    cp -r "$reference/models/$model" "tests/fixtures/models/$model"
    rm -f "tests/fixtures/models/$model/README.md"  # the card is not a test input
done
for file in model_parity.json model_parity_families.json model_parity_decoders.json \
    trajectories.json trajectories_decoders.json golden_losses.json golden_losses_adrmse.json \
    golden_metrics.json; do
    cp "$reference/$file" "tests/fixtures/$file"
done
echo "copied into tests/fixtures"
