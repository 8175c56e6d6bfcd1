#!/usr/bin/env bash
# The larger-than-memory benchmark (issue 23): `train --max-steps 5` on a tiny model over a
# generated JSONL of ROWS labeled pairs (~8-word queries, ~60-word documents), three ways:
# the rows read into memory, the first run on disk (converting to the dataset cache) and the
# second (a cache hit). Prints one JSON line per run: peak RSS, wall time, and the seconds
# from the start of training to its first step.
#
# Usage: scripts/bench-large-data.sh [ROWS] [WORK_DIR]   (default 2000000, target/bench-large)
# Needs python3 (the generator) and GNU time (`apt-get install time`).
set -euo pipefail
rows=${1:-2000000}
work=${2:-target/bench-large}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"
work=$(cd "$work" && pwd)
data="$work/pairs-$rows.jsonl"
if [[ ! -f $data ]]; then
    echo "generating $data" >&2
    python3 "$root/scripts/make-large-pairs.py" "$rows" "$data.partial"
    mv "$data.partial" "$data"
fi
cargo build --release -p crosstrain --manifest-path "$root/Cargo.toml" >&2
binary="$root/target/release/crosstrain"
model="$root/tests/fixtures/models/tiny-bert-ce"
export CROSSTRAIN_CACHE="$work/cache"
rm -rf "$CROSSTRAIN_CACHE"
run() {
    local name=$1 storage=$2
    rm -rf "$work/out-$name"
    /usr/bin/time -f '%M %e' -o "$work/time-$name" "$binary" train --model "$model" \
        --train "$data" --loss BinaryCrossEntropyLoss --max-steps 5 --batch-size 16 \
        --no-export-onnx --output "$work/out-$name" --set "train.storage=\"$storage\"" \
        --json >"$work/summary-$name.json"
    read -r rss_kb wall <"$work/time-$name"
    python3 - "$name" "$rows" "$(stat -L -c %s "$data")" "$rss_kb" "$wall" \
        "$work/summary-$name.json" <<'PY'
import json, sys
name, rows, size, rss_kb, wall, summary = sys.argv[1:]
summary = json.load(open(summary))
print(json.dumps({
    "run": name, "rows": int(rows), "file_bytes": int(size),
    "peak_rss_mb": round(int(rss_kb) / 1024, 1), "wall_seconds": float(wall),
    "seconds_to_first_step": round(summary["startup_seconds"], 2),
    "cache": summary["datasets"][0]["cache"],
}))
PY
}
run memory memory
run disk-first disk
run disk-cached disk
