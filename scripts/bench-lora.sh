#!/usr/bin/env bash
# Same-sitting LoRA benchmark (issue 33): ROUNDS alternating rounds of
#   crosstrain bench train --from-scratch --max-length 256            (full fine-tuning)
#   crosstrain bench train --from-scratch --max-length 256 --lora-r 16 [--base-dtype bf16]
#   scripts/bench-reference.py MODEL --from-config [--lora-r 16]       (sentence-transformers + PEFT)
# on one config-only decoder model (default ../shared/reference/models/bench-qwen3-reranker),
# STEPS timed steps after one untimed, batches of 16; then the median pairs/s, seconds per step
# and peak RSS of each, and the ratios, as one JSON line.
# Usage: bash scripts/bench-lora.sh [MODEL_DIR] [ROUNDS=2] [PYTHON=python3] [STEPS=4]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-../shared/reference/models/bench-qwen3-reranker}
rounds=${2:-2}
python=${3:-python3}
steps=${4:-4}
binary=target/release/crosstrain
[[ -x $binary ]] || cargo build --release
results=$(mktemp)
for round in $(seq "$rounds"); do
    for variant in full lora lora-bf16; do
        case $variant in
            full) extra=() ;;
            lora) extra=(--lora-r 16) ;;
            lora-bf16) extra=(--lora-r 16 --base-dtype bf16) ;;
        esac
        "$binary" bench train --model "$model" --from-scratch --max-length 256 --warmup-steps 1 \
            --steps "$steps" "${extra[@]}" 2>/dev/null |
            "$python" -c "import json,sys; d=json.load(sys.stdin); print('crosstrain', '$variant', d['pairs_per_second'], d['seconds_per_step']['total'], d['peak_rss_mb'])" >>"$results"
    done
    for variant in full lora; do
        extra=()
        [[ $variant == lora ]] && extra=(--lora-r 16)
        "$python" scripts/bench-reference.py "$model" --from-config --skip-predict --warmup-steps 1 \
            --steps "$steps" "${extra[@]}" 2>/dev/null |
            "$python" -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    print('pytorch', '$variant', d['pairs_per_second'], d['seconds'] / max(1, d['pairs'] // 16), d['peak_rss_mb'])" >>"$results"
    done
    echo "round $round done" >&2
done
"$python" - "$results" "$model" <<'PY'
import json, statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def med(engine, variant, column):
    return statistics.median(float(r[column]) for r in rows if r[0] == engine and r[1] == variant)
out = {"model": sys.argv[2], "rounds": sum(1 for r in rows if r[:2] == ["pytorch", "full"])}
for engine, variants in (("crosstrain", ("full", "lora", "lora-bf16")), ("pytorch", ("full", "lora"))):
    out[engine] = {v: {"pairs_per_second": round(med(engine, v, 2), 3),
                       "seconds_per_step": round(med(engine, v, 3), 2),
                       "peak_rss_mb": round(med(engine, v, 4))} for v in variants}
c, p = out["crosstrain"], out["pytorch"]
out["lora_step_over_full_step"] = {"crosstrain": round(c["lora"]["seconds_per_step"] / c["full"]["seconds_per_step"], 3),
                                   "pytorch": round(p["lora"]["seconds_per_step"] / p["full"]["seconds_per_step"], 3)}
out["lora_throughput_ratio"] = round(c["lora"]["pairs_per_second"] / p["lora"]["pairs_per_second"], 3)
out["full_throughput_ratio"] = round(c["full"]["pairs_per_second"] / p["full"]["pairs_per_second"], 3)
print(json.dumps(out))
PY
