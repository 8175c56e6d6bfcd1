#!/usr/bin/env bash
# Serving benchmark, same sitting: `crosstrain serve` (candle, and ONNX Runtime on float32,
# uint8 and, where the CPU has AVX-512 VNNI, int8 exports of a copy of the model) against infinity_emb's torch engine on the same cross-encoder, with the
# same requests (one query and 20 documents of ~70 words, POST /v1/rerank for crosstrain and
# infinity's POST /rerank), load from oha. For each server and 1 and 64 concurrent clients:
# documents/s and p50/p99 latency, one JSON line each. Then a soak of crosstrain at 64 clients
# (SOAK_S seconds; also of the int8 export on a CPU with AVX-512 VNNI): failed and non-200
# requests, and resident memory after 10 s and at the end.
#
# Installs what it needs through cargo and pip: oha (cargo install) into .bench-tools/, and
# infinity-emb 0.0.78 (with torch) into its own virtual environment .bench-tools/infinity/
# (skip it with INFINITY=0).
# Usage: bash scripts/bench-serve.sh MODEL_DIR [ROUNDS=2] [REQUESTS=2] [SOAK_S=60]
# (REQUESTS: requests per client in each timed run; ROUNDS=0 runs only the soaks.)
set -euo pipefail
cd "$(dirname "$0")/.."
model=$(realpath "$1")
rounds=${2:-2}
requests=${3:-2}
soak=${4:-60}
tools=$PWD/.bench-tools
binary=target/release/crosstrain
[[ -x $binary ]] || cargo build --release -p crosstrain
if [[ ! -x $tools/bin/oha ]]; then
    cargo install oha --version 1.12.0 --locked --root "$tools" >&2
fi
oha=$tools/bin/oha
if [[ ${INFINITY:-1} == 1 && ! -x $tools/infinity/bin/infinity_emb ]]; then
    python3 -m venv "$tools/infinity"
    "$tools/infinity/bin/pip" install -q "infinity-emb[server,torch]==0.0.78" >&2
fi

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# The request: a query and 20 documents of ~70 words, built from a fixed word list so every
# run sends the same text.
python3 - "$work" <<'PY'
import json, random, sys
random.seed(0)
words = ("network people travel river data country bridge team house court university plane "
         "train leader study artist internet council market station ocean teacher wood bank "
         "player forest weather model island family night school research history energy light "
         "water plant sugar leaf root soil carbon cell protein music city road law").split()
documents = [" ".join(random.choice(words) for _ in range(70)) + "." for _ in range(20)]
query = "how do plants turn light and water into energy?"
# The same body for both servers (crosstrain's /v1/rerank echoes `model`).
json.dump({"query": query, "documents": documents, "model": "model"},
          open(f"{sys.argv[1]}/request.json", "w"))
PY

wait_for() { # URL
    for _ in $(seq 600); do
        curl -sf "$1" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "no answer from $1" >&2
    return 1
}

# oha's JSON summary -> one line: documents/s, p50, p99, non-200 and failed requests. A fixed
# number of requests (REQUESTS per client), not a duration, so no request is cut off at the end.
load() { # NAME URL CLIENTS ROUND
    local name=$1 url=$2 clients=$3 round=$4
    "$oha" --no-tui -n "$clients" -c "$clients" -m POST -H 'content-type: application/json' \
        -D "$work/request.json" "$url" >/dev/null
    local count=$((clients * requests < 20 ? 20 : clients * requests))
    "$oha" --no-tui --output-format json -n "$count" -c "$clients" -m POST \
        -H 'content-type: application/json' -D "$work/request.json" "$url" >"$work/oha.json"
    python3 - "$work/oha.json" "$name" "$clients" "$round" <<'PY' | tee -a "$work/results.jsonl"
import json, sys
run = json.load(open(sys.argv[1]))
summary, percentiles = run["summary"], run["latencyPercentiles"]
codes = run.get("statusCodeDistribution", {})
print(json.dumps({
    "server": sys.argv[2], "clients": int(sys.argv[3]), "round": int(sys.argv[4]),
    "documents_per_second": round(int(codes.get("200", 0)) * 20 / summary["total"], 1),
    "p50_s": round(percentiles["p50"], 4), "p99_s": round(percentiles["p99"], 4),
    "non_200": sum(int(v) for k, v in codes.items() if k != "200"),
    "errors": sum(run.get("errorDistribution", {}).values()),
}))
PY
}

serve() { # PORT ARGS...
    local port=$1
    shift
    "$binary" serve --model "$served" --port "$port" "$@" 2>"$work/serve-$port.log" &
    pids+=($!)
    wait_for "http://127.0.0.1:$port/health"
}

# A copy of the model with its ONNX exports: float32, uint8 for AVX2 CPUs, and int8 where the
# CPU has AVX-512 VNNI (the quantization ONNX Runtime's int8 kernels are made for there).
served=$work/model
cp -r "$model" "$served"
"$binary" export-onnx --model "$served" >&2
"$binary" export-onnx --model "$served" --quantize uint8 >&2
vnni=0
if grep -qw avx512_vnni /proc/cpuinfo; then
    vnni=1
    "$binary" export-onnx --model "$served" --quantize int8 >&2
fi

# All servers up at once (an idle one takes no CPU), then ROUNDS alternating rounds, so the
# machine's drift falls on every server alike.
serve 18401
servers=("crosstrain-candle http://127.0.0.1:18401/v1/rerank")
serve 18402 --backend onnx
servers+=("crosstrain-onnx-float32 http://127.0.0.1:18402/v1/rerank")
serve 18403 --backend onnx --onnx-file onnx/model_quint8_avx2.onnx
servers+=("crosstrain-onnx-uint8 http://127.0.0.1:18403/v1/rerank")
if [[ $vnni == 1 ]]; then
    serve 18405 --backend onnx --onnx-file onnx/model_qint8_avx512_vnni.onnx
    servers+=("crosstrain-onnx-int8 http://127.0.0.1:18405/v1/rerank")
fi
if [[ ${INFINITY:-1} == 1 ]]; then
    "$tools/infinity/bin/infinity_emb" v2 --model-id "$model" --served-model-name model \
        --engine torch --device cpu --port 18409 >"$work/infinity.log" 2>&1 &
    pids+=($!)
    wait_for http://127.0.0.1:18409/health
    servers+=("infinity-torch http://127.0.0.1:18409/rerank")
fi
: >"$work/results.jsonl"
for round in $(seq "$rounds"); do
    for server in "${servers[@]}"; do
        for clients in 64 1; do
            # shellcheck disable=SC2086
            load $server "$clients" "$round"
        done
    done
done
python3 - "$work/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
summary = {}
for row in rows:
    key = f"{row['server']}@{row['clients']}"
    summary.setdefault(key, []).append(row)
out = {key: {"documents_per_second_median": statistics.median(r["documents_per_second"] for r in runs),
             "p50_s_median": statistics.median(r["p50_s"] for r in runs),
             "p99_s_median": statistics.median(r["p99_s"] for r in runs)}
       for key, runs in summary.items()}
if "infinity-torch@64" in out:
    base = out["infinity-torch@64"]["documents_per_second_median"]
    for key, value in out.items():
        if key.endswith("@64"):
            value["vs_infinity"] = round(value["documents_per_second_median"] / base, 3)
print(json.dumps(out))
PY
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
pids=()

# Soak: 64 clients for SOAK_S seconds on a fresh server (candle, and the int8 export where the
# CPU has VNNI); resident memory after 10 s and at the end.
soak() { # NAME PORT ARGS...
    local name=$1 port=$2
    shift 2
    serve "$port" "$@"
    local pid=${pids[-1]}
    rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
    "$oha" --no-tui --output-format json -z "${soak}s" -c 64 -m POST -H 'content-type: application/json' \
        -D "$work/request.json" "http://127.0.0.1:$port/v1/rerank" >"$work/soak.json" &
    local oha_pid=$!
    sleep 10
    local rss_10s
    rss_10s=$(rss)
    wait "$oha_pid"
    local rss_end
    rss_end=$(rss)
    kill "$pid" 2>/dev/null || true
    python3 - "$work/soak.json" "$rss_10s" "$rss_end" "$soak" "$name" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
codes = run.get("statusCodeDistribution", {})
rss_10s, rss_end = int(sys.argv[2]), int(sys.argv[3])
print(json.dumps({
    "soak": sys.argv[5], "soak_s": int(sys.argv[4]), "clients": 64,
    "requests": sum(int(v) for v in codes.values()),
    "non_200": sum(int(v) for k, v in codes.items() if k != "200"),
    # oha ends a timed run by cancelling the requests still open: not the server's failures.
    "cut_at_deadline": sum(v for k, v in run.get("errorDistribution", {}).items() if "deadline" in k),
    "errors": sum(v for k, v in run.get("errorDistribution", {}).items() if "deadline" not in k),
    "p50_s": round(run["latencyPercentiles"]["p50"], 4),
    "rss_mb_at_10s": round(rss_10s / 1024, 1), "rss_mb_at_end": round(rss_end / 1024, 1),
    "rss_change": round(rss_end / rss_10s - 1, 4),
}))
PY
}
soak crosstrain-candle 18404
if [[ $vnni == 1 ]]; then
    soak crosstrain-onnx-int8 18406 --backend onnx --onnx-file onnx/model_qint8_avx512_vnni.onnx
fi
