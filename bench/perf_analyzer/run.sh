#!/usr/bin/env bash
# perf_analyzer against Triton directly (no gateway), on the workload of issue 6:
# requests of 1 query x B documents from data/MODEL.json (built by
# `python -m bench.perf_analyzer.generate`), B = min(100, the model's max_batch_size),
# sent as [B, 1] string tensors (-b B), one run per concurrency. For Qwen3 (max_batch_size 64)
# a request is 64 documents, where the gateway would send 100 as chunks of 64 and 36.
#
#   bench/perf_analyzer/run.sh MODEL [extra perf_analyzer flags]
#
# Environment: TRITON_GRPC_URL (localhost:8101), CONCURRENCY ("1 8 64"),
# MEASUREMENT_MS (10000), OUT (bench_results/perf_analyzer: one CSV per concurrency).
# Exit status 3: perf_analyzer is not installed here.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
model=${1:-}
if [ -z "$model" ]; then
  echo "usage: $0 MODEL [extra perf_analyzer flags]; models: $(cd "$here/data" && ls *.json | grep -v manifest | sed 's/\.json$//' | tr '\n' ' ')" >&2
  exit 2
fi
shift
data="$here/data/$model.json"
if [ ! -f "$data" ]; then
  echo "no input data for '$model' at $data; run: python -m bench.perf_analyzer.generate" >&2
  exit 2
fi

if ! command -v perf_analyzer >/dev/null 2>&1; then
  cat <<MSG
perf_analyzer is not installed on this machine, so nothing was measured.
It ships in NVIDIA's Triton SDK image; against a Triton on this host:
  docker run --rm --net=host -v "$repo:/workspace/reranker" nvcr.io/nvidia/tritonserver:24.10-py3-sdk \\
      /workspace/reranker/bench/perf_analyzer/run.sh $model
Without it, python -m bench.rerank_bench covers the same ground (the engine direct, and
gateway + Triton end to end, at concurrency 1, 8 and 64), for example:
  python -m bench.rerank_bench $model --ways b c
MSG
  exit 3
fi

# -b is the number of rows the data file was laid out for (see data/manifest.json).
batch=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["models"][sys.argv[2]]["batch_size"])' \
  "$here/data/manifest.json" "$model")
shapes=(--shape query:1 --shape document:1)
if grep -q '"instruction"' "$data"; then
  shapes+=(--shape instruction:1)
fi
out=${OUT:-$repo/bench_results/perf_analyzer}
mkdir -p "$out"

for concurrency in ${CONCURRENCY:-1 8 64}; do
  echo "== $model: batch $batch, concurrency $concurrency"
  perf_analyzer -m "$model" -u "${TRITON_GRPC_URL:-localhost:8101}" -i grpc \
    --input-data "$data" -b "$batch" "${shapes[@]}" \
    --concurrency-range "$concurrency:$concurrency" \
    --measurement-interval "${MEASUREMENT_MS:-10000}" \
    -f "$out/${model}_c${concurrency}.csv" "$@"
done
echo "CSV results in $out"
