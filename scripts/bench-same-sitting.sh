#!/usr/bin/env bash
# Same-sitting speed comparison with sentence-transformers on one config-only model: ROUNDS
# alternating rounds of `crosstrain bench train|predict --from-scratch` and
# scripts/bench-reference.py --from-config, then the median pairs/s and peak RSS of each and
# the ratios, as one JSON line. Alternating rounds and medians because a shared 2-vCPU machine drifts by
# ±15% between runs.
# Usage: bash scripts/bench-same-sitting.sh MODEL_DIR [ROUNDS=5] [PYTHON=python3]
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1
rounds=${2:-5}
python=${3:-python3}
binary=target/release/crosstrain
[[ -x $binary ]] || cargo build --release
# Causal-LM rerankers run at 256 tokens (their chat template alone is ~115), as
# scripts/bench-reference.py runs them; the others at the reference's 128.
max_length=128
if grep -q 'ForCausalLM' "$model/config.json"; then
    max_length=256
fi
results=$(mktemp)
for round in $(seq "$rounds"); do
    for bench in train predict; do
        "$binary" bench "$bench" --model "$model" --from-scratch --max-length "$max_length" 2>/dev/null |
            "$python" -c "import json,sys; d=json.load(sys.stdin); print('crosstrain', d['bench'], d['pairs_per_second'], d['peak_rss_mb'])" >>"$results"
    done
    # Train and predict in processes of their own, as crosstrain's, so each peak RSS is its own.
    for skip in --skip-predict --skip-train; do
        "$python" scripts/bench-reference.py "$model" --from-config "$skip" 2>/dev/null |
            "$python" -c "
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    print('pytorch', d['bench'], d['pairs_per_second'], d['peak_rss_mb'])" >>"$results"
    done
    echo "round $round done" >&2
done
"$python" - "$results" "$model" <<'PY'
import json, statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def median(engine, bench, column=2):
    return statistics.median(float(r[column]) for r in rows if r[0] == engine and r[1] == bench)
out = {"model": sys.argv[2], "rounds": sum(1 for r in rows if r[:2] == ["pytorch", "train"])}
for bench in ("train", "predict"):
    ours, theirs = median("crosstrain", bench), median("pytorch", bench)
    out[bench] = {"crosstrain_pairs_per_second": round(ours, 2),
                  "pytorch_pairs_per_second": round(theirs, 2), "ratio": round(ours / theirs, 3),
                  "crosstrain_peak_rss_mb": round(median("crosstrain", bench, 3)),
                  "pytorch_peak_rss_mb": round(median("pytorch", bench, 3))}
print(json.dumps(out))
PY
