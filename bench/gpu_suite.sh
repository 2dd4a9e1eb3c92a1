#!/usr/bin/env bash
# The GPU measurements of this repository, as named steps, each under its own time limit, so that one
# failing step leaves the others' results. Every step writes under $RESULTS/<step>/ (JSON, markdown, logs).
#
#   bench/gpu_suite.sh STEP...        e.g.  bench/gpu_suite.sh models bge-instances bge-ways memory
#
# Needs: a GPU machine with the engine's packages, the real tokenizers in $TOKENIZERS (default /tmp/tok) and
# room for random-weight models in $MODELS (default /tmp/models). Single-GPU steps run on GPU 0
# (CUDA_VISIBLE_DEVICES=0); steps named *-2gpu use two.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-bench_results/gpu}
MODELS=${MODELS:-/tmp/models}
TOKENIZERS=${TOKENIZERS:-/tmp/tok}
DURATION=${DURATION:-5}
BUILD=${BUILD:-bge-reranker-base Qwen3-Reranker-4B Qwen3-Reranker-8B}
# Way (d) needs sentence-transformers, which imports scipy and scikit-learn; a serving environment with numpy<2
# (the Triton python backend's stub needs it) may lack them: BASELINE_PYTHON runs (d) in another environment.
BASELINE_PYTHON=${BASELINE_PYTHON:-python}
mkdir -p "$RESULTS"
bench=(python -m bench.rerank_bench --models-dir "$MODELS" --tokenizers "$TOKENIZERS" --duration "$DURATION")
baseline=(env PYTHONPATH="$PWD" "$BASELINE_PYTHON" -m bench.rerank_bench --models-dir "$MODELS"
          --tokenizers "$TOKENIZERS" --duration "$DURATION")

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log it, never stop the suite
  local name=$1 limit=$2; shift 2
  mkdir -p "$RESULTS/$name"
  echo "=== $name (limit ${limit}s): $*" | tee -a "$RESULTS/suite.log"
  local started=$SECONDS
  timeout --kill-after=20 "$limit" "$@" >"$RESULTS/$name/stdout.log" 2>&1
  local code=$?
  echo "=== $name: exit $code after $((SECONDS - started))s" | tee -a "$RESULTS/suite.log"
  tail -n 25 "$RESULTS/$name/stdout.log"
}

one_gpu=(env CUDA_VISIBLE_DEVICES=0)

bge_instances() {  # bge_instances PREFIX N...: (c) at each Triton instance count on one GPU, as PREFIX-N
  local prefix=$1 n; shift
  for n in "$@"; do
    step "$prefix-$n" 150 "${one_gpu[@]}" "${bench[@]}" bge --ways c --instances "$n" --concurrency 1 64 \
      --single-pair-requests 30 --out "$RESULTS/$prefix-$n"
  done
}

seed_variant() {  # seed_variant NAME REPOSITORY [VAR=VALUE...]: short seed-load levels on one stack of its own
  local name=$1 repo=$2; shift 2
  step "seed-$name" 200 env "$@" CUDA_VISIBLE_DEVICES=0 python -m bench.seed_load --serve bge --models-dir "$MODELS" \
    --model-repository "$repo" --processes "${SEED_PROCESSES:-4}" --duration "${SEED_AB_DURATION:-10}" --warmup 2 \
    --level c1 --level seed:200 --level seed:1000 --level mixed:200 --out "$RESULTS/seed-$name"
}

for name in "$@"; do
  case "$name" in
    seed-load)  # issue 24: the seed's own load test (single pairs from 200 and 1,000 clients, 1x10 mixed, c=1) as
      # shipped, each level again with twice the generator processes, then two hot switches under 200 clients
      step seed-load 560 "${one_gpu[@]}" python -m bench.seed_load --serve bge --models-dir "$MODELS" \
        --processes "${SEED_PROCESSES:-4}" --duration "${SEED_DURATION:-20}" --level c1 --level seed:200 \
        --level seed:1000 --level mixed:200 --check-generator --switch "${SEED_SWITCH:-qwen3-reranker-8b-fp8,bge}" \
        --profile --out "$RESULTS/seed-load" ;;
    seed-load-ab)  # issue 24: the gateway's workers and coalescing, and Triton's max_queue_delay, one stack each
      python -m bench.repo_variant --out /tmp/repo-delay0 --max-queue-delay-us 0 >/dev/null
      for variant in ${SEED_VARIANTS:-w8 w1 w8-plain w8-delay0}; do
        case "$variant" in
          w8) seed_variant w8 model_repository RERANKER_WORKERS=8 ;;
          w8-plain) seed_variant w8-plain model_repository RERANKER_WORKERS=8 RERANKER_COALESCE_MAX_ROWS=0 ;;
          w1) seed_variant w1 model_repository RERANKER_WORKERS=1 RERANKER_COALESCE_MAX_ROWS=0 ;;
          w8-delay0) seed_variant w8-delay0 /tmp/repo-delay0 RERANKER_WORKERS=8 ;;  # Triton's batcher waits for nobody
          w8-unbounded) seed_variant w8-unbounded model_repository RERANKER_WORKERS=8 RERANKER_COALESCE_MAX_IN_FLIGHT=64 ;;
          *) echo "unknown seed variant $variant" >&2 ;;
        esac
      done ;;
    models)  # random-weight models of the real sizes, with the real tokenizers
      # shellcheck disable=SC2086
      step models 400 python -m bench.random_models --models-dir "$MODELS" --tokenizers "$TOKENIZERS" $BUILD ;;
    bge-instances)  # (c) at $INSTANCES Triton instances on one GPU, side by side in one suite run
      # shellcheck disable=SC2086
      bge_instances bge-instances ${INSTANCES:-1 2 3 4} ;;
    bge-mps)  # the bge-instances runs again under CUDA MPS (a user-space daemon; the GPU's settings stay as they are)
      export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
      mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
      CUDA_VISIBLE_DEVICES=0 nvidia-cuda-mps-control -d && echo "=== MPS daemon started" | tee -a "$RESULTS/suite.log"
      # shellcheck disable=SC2086
      bge_instances bge-mps ${INSTANCES:-3 4}
      echo quit | nvidia-cuda-mps-control
      unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ;;
    bge-ways|qwen4b-ways|qwen8b-ways)  # (b), (c) as shipped (configs/gpu.pbtxt for bge), and (d), on one GPU
      model=${name%-ways}
      step "$name-bc" 420 "${one_gpu[@]}" "${bench[@]}" "$model" --ways b c --concurrency 1 8 64 --single-pair-requests 30 \
        --out "$RESULTS/$name-bc"
      step "$name-d" 240 "${one_gpu[@]}" "${baseline[@]}" "$model" --ways d --concurrency 1 8 64 --single-pair-requests 30 \
        --out "$RESULTS/$name-d"
      step "$name" 60 python -m bench.rerank_bench --merge "$RESULTS/$name-bc/rerank_bench.json" \
        "$RESULTS/$name-d/rerank_bench.json" "$RESULTS/$name" ;;
    bge-2gpu)  # (c) as shipped on two GPUs: the instances of configs/gpu.pbtxt on each
      step bge-2gpu 200 "${bench[@]}" bge --ways c --concurrency 64 256 --single-pair-requests 0 \
        --out "$RESULTS/bge-2gpu" ;;
    scaleout)  # issue 12: one GPU, one Triton on both, one Triton per GPU behind one gateway ($SCALEOUT models)
      # shellcheck disable=SC2086
      step scaleout 560 python -m bench.scaleout ${SCALEOUT:-qwen4b bge} --random-weights --models-dir "$MODELS" \
        --tokenizers "$TOKENIZERS" --concurrency ${SCALEOUT_CONCURRENCY:-64 256} --duration "$DURATION" \
        --out "$RESULTS/scaleout" ;;
    priority)  # issue 17: interactive single-pair probes while bulk clients saturate bge, on one GPU
      step priority 300 "${one_gpu[@]}" python -m bench.priority --serve "${PRIORITY_MODEL:-bge}" --models-dir "$MODELS" \
        --low-concurrency 32 --low-documents 64 --out "$RESULTS/priority/priority.json" ;;
    memory)  # bge's shipped instances and Qwen3-8B loaded together, under load and the heaviest batches
      step memory 300 "${one_gpu[@]}" python -m bench.memory_check --models-dir "$MODELS" bge-reranker-base \
        qwen3-reranker-8b --duration 30 --limit-gib 60 --out "$RESULTS/memory" ;;
    kernels)  # the Triton kernels and the FP8 product against their PyTorch references, on this GPU
      step kernels 240 "${one_gpu[@]}" python -m pytest -q -p no:cacheprovider tests/engine/test_kernels.py \
        tests/engine/test_fp8.py -k "cuda or scaled_mm" ;;
    qwen4b-fp8|qwen8b-fp8)  # bf16 and FP8 entries of one Qwen3 size side by side: (b) and (c), on one GPU
      model=${name%-fp8}
      step "$name" 480 "${one_gpu[@]}" "${bench[@]}" "$model" "$model-fp8" --ways b c --concurrency 1 8 64 \
        --single-pair-requests 10 --out "$RESULTS/$name" ;;
    fp8-alone)  # each FP8 entry loaded alone: its memory, and where (c)'s time goes against (b) (Triton's counters)
      for model in ${FP8_MODELS:-qwen8b qwen4b}; do
        step "$model-fp8-alone" 300 "${one_gpu[@]}" "${bench[@]}" "$model-fp8" --ways b c --concurrency 1 64 \
          --single-pair-requests 10 --out "$RESULTS/$model-fp8-alone"
      done ;;
    fp8-instances)  # Qwen3-8B FP8 with two Triton instances on one GPU: one's host work overlaps the other's kernels
      step fp8-instances 200 "${one_gpu[@]}" "${bench[@]}" qwen8b-fp8 --ways c --instances 2 --concurrency 64 \
        --single-pair-requests 0 --out "$RESULTS/fp8-instances" ;;
    profile-fp8)  # where the engine's time goes, bf16 against FP8: phases, GPU busy, kernel time by kind, peaks
      step profile-fp8 420 "${one_gpu[@]}" python -m bench.profile_engine --models-dir "$MODELS" \
        ${PROFILE_MODELS:-Qwen3-Reranker-4B Qwen3-Reranker-8B} --quantization none fp8 --threads 1 --budgets 32768 \
        --out "$RESULTS/profile-fp8" ;;
    qwen4b-d|qwen8b-d|bge-d)  # way (d) alone (its Python may differ: BASELINE_PYTHON)
      model=${name%-d}
      step "$name" 240 "${one_gpu[@]}" "${baseline[@]}" "$model" --ways d --concurrency 1 8 64 \
        --single-pair-requests 10 --out "$RESULTS/$name" ;;
    fidelity)  # random-weight Qwen3: bf16 and FP8 against float32 on the same 1,000 pairs
      step fidelity 360 "${one_gpu[@]}" python -m bench.fp8_fidelity --random-qwen3 --models-dir "$MODELS" \
        --tokenizers "$TOKENIZERS" --models ${FIDELITY_MODELS:-Qwen3-Reranker-4B Qwen3-Reranker-8B} \
        --out "$RESULTS/fidelity/fidelity.json" ;;
    cache)  # issue 25: the score cache off, in-process and on Redis side by side, Zipf workload, bge on one GPU
      # REDIS_SERVER: a redis-server binary or bench/redis_kit.sh's wrapper; without one the redis variant is skipped.
      step cache 540 "${one_gpu[@]}" python -m bench.cache_bench "${CACHE_MODEL:-bge}" --models-dir "$MODELS" \
        --concurrency ${CACHE_CONCURRENCY:-16} --rounds ${CACHE_ROUNDS:-3} --doc-words 64 256 \
        --redis-server "${REDIS_SERVER:-redis-server}" \
        --out "$RESULTS/cache/cache_bench.json" ;;
    *) echo "unknown step $name" >&2 ;;
  esac
done
