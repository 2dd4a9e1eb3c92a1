#!/usr/bin/env bash
# Issue 22's measurements in one device call (bench/kernel_suite.py says what each step does). Every step runs
# under `timeout`, within what is left of SUITE_BUDGET seconds, and a failing step leaves the others' results.
# The merged results land in $OUT (at most 4 files): kernel_suite.json, table.txt, ops.txt, kernel_suite.log;
# the short table is printed last.
#
#   source .gpu/setup.sh; bash bench/kernel_suite.sh          # on the GPU machine, from the repo root
#   bash bench/kernel_suite.sh --cpu                          # CPU smoke run, tiny models (kernels interpreted)
#
# Environment: OUT (default bench_results/kernel_suite), MODELS (/tmp/models), TOKENIZERS (/tmp/tok),
# WORK (/tmp/kernel_suite), SUITE_BUDGET (390 s), STEPS (default: all, in priority order).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_results/kernel_suite}
WORK=${WORK:-/tmp/kernel_suite}
MODELS=${MODELS:-/tmp/models}
TOKENIZERS=${TOKENIZERS:-/tmp/tok}
BUDGET=${SUITE_BUDGET:-390}
STEPS=${STEPS:-"env models dense check bge qwen kernels compile"}
CPU=0
SLOW=1  # step limits are multiplied by this (the CPU smoke run is slower than the card)
[ "${1:-}" = "--cpu" ] && CPU=1 && SLOW=3
mkdir -p "$OUT" "$WORK"
LOG="$WORK/kernel_suite.log"
: >"$LOG"
suite=(python -m bench.kernel_suite --work "$WORK" --out "$OUT" --models-dir "$MODELS")
bench=(python -m bench.kernel_bench --out "$WORK")
if [ "$CPU" = 1 ]; then
  MODELS=${MODELS_CPU:-$WORK/models}
  suite=(python -m bench.kernel_suite --work "$WORK" --out "$OUT" --models-dir "$MODELS" --device cpu --tiny
         --pool 3 --docs 20 --concurrency 4 --duration 1 --engine-requests 2)
  bench=(python -m bench.kernel_bench --out "$WORK" --device cpu --tokens 4 --bge-tokens 8 --rounds 1 --models Qwen3-Reranker-4B)
fi

step() {  # step NAME LIMIT COMMAND...: run within the suite's budget, log it, never stop the suite
  local name=$1 limit=$(($2 * SLOW)); shift 2
  local left=$((BUDGET - SECONDS - 15))  # 15 s kept for the table
  if [ "$left" -lt 20 ]; then
    echo "=== $name: skipped, $((BUDGET - SECONDS)) s of the budget left" | tee -a "$LOG"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit}s, at ${SECONDS}s): $*" | tee -a "$LOG"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  echo "=== $name: exit $? after $((SECONDS - started))s" | tee -a "$LOG"
}

for name in $STEPS; do
  case "$name" in
    env)
      { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true; } >>"$LOG"
      step env 60 "${suite[@]}" env ;;
    models)
      if [ "$CPU" = 1 ]; then
        step models 40 "${suite[@]}" models
      else  # bge ~6 s, Qwen3-4B ~25 s on an H200 (bench/results/*/suite.log)
        step models 150 python -m bench.random_models --models-dir "$MODELS" --tokenizers "$TOKENIZERS" \
          bge-reranker-base Qwen3-Reranker-4B
      fi ;;
    dense) step dense 60 "${suite[@]}" dense ;;
    check)
      if [ "$CPU" = 1 ]; then
        step check 130 env TRITON_INTERPRET=1 "${suite[@]}" check --no-pytest
      else
        step check 120 "${suite[@]}" check
      fi ;;
    kernels)
      if [ "$CPU" = 1 ]; then
        step kernels 100 env TRITON_INTERPRET=1 "${bench[@]}" --methods --bge --tuning
      else
        step kernels 90 "${bench[@]}" --methods --tuning --bge --rounds 20
      fi ;;
    bge) step bge 200 "${suite[@]}" bge ;;
    qwen) step qwen 130 "${suite[@]}" qwen ;;
    compile) step compile 150 "${suite[@]}" compile ;;
    *) echo "unknown step $name" | tee -a "$LOG" ;;
  esac
done
BUDGET=$((BUDGET + 15)) step table 30 "${suite[@]}" table
cp "$LOG" "$OUT/kernel_suite.log"
echo "=== results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
cat "$OUT/table.txt" 2>/dev/null || echo "no table: see $OUT/kernel_suite.log"
