"""Where one engine call's time goes on a GPU, for the limits part of issue 6.

For each model, on issue 6's workload (1 query x N documents per request):

- phases: tokenizing (`encode`) against the forward passes (`infer`, synced),
  per request and for a single pair;
- the tokenizer's two batch entry points on each request's documents,
  `encode_batch` against `encode_batch_fast` (which the engine uses), in turn;
- GPU busy: the summed CUDA kernel time under torch.profiler against the wall
  time of the same calls (well under 1 means the GPU waits on the host), and
  the top kernels/ops by GPU time, written to `<out>/<model>_ops.txt`;
- the micro-batch token budget (`max_batch_tokens`), each value in turn;
- two scorers (two model copies) fed by two threads, a proxy for Triton's
  `instance_group { count: 2 }`, against one;
- optionally (`--packed-ab`), padded micro-batches against packed
  (padding-free) batches, two scorers timed in turn in one process, with
  their largest score difference, and the varlen kernel's against the
  per-span attention loop it replaces on CPU;
- optionally, CUDA graph replay (`--cuda-graphs`, rerank_engine.cuda_graphs)
  with its largest score change against the eager forward, and
  `torch.compile` of the model's forward (`--compile`);
- each precision in `--quantization` (`none`, `fp8`: the engine's FP8 recipe), and
  the GPU kernel time of whole requests split by kind (`kernel_shares`: matrix
  products, attention, this repository's fused Triton kernels, the rest).

Prints one JSON line per model and writes `<out>/profile.json`.

  python -m bench.profile_engine --models-dir /tmp/models bge-reranker-base --out /tmp/profile
  python -m bench.profile_engine --models-dir /tmp/models Qwen3-Reranker-8B --quantization none fp8 --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from bench.engine_bench import MODELS, workload
from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.scoring import Pair, Scorer


ACTIVITIES = {"cuda": [ProfilerActivity.CPU, ProfilerActivity.CUDA], "cpu": [ProfilerActivity.CPU]}
KERNEL_KINDS = (
    # Checked in order: a kernel counts under the first kind whose pattern its name matches.
    ("fused (rerank_engine Triton kernels)", re.compile(r"rms_norm_quant|silu_mul|per_token_quant|qk_norm_rope")),
    ("attention", re.compile(r"flash|fmha|attention|sdpa", re.IGNORECASE)),
    ("matrix products", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|matmul|splitk", re.IGNORECASE)),
)
"""GPU kernels by what they do, from their names (cuBLAS(Lt)/CUTLASS GEMMs for both bf16 `mm` and FP8
`_scaled_mm`, FlashAttention, the Triton kernels of rerank_engine.triton_kernels); everything else is
"other" (element-wise, copies, reductions)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(scorer: Scorer, pairs: list[Pair], device: torch.device) -> tuple[float, float]:
    """(encode ms, infer ms) of one scoring call, synced."""
    started = time.perf_counter()
    encoded = scorer.encode(pairs)
    encoded_at = time.perf_counter()
    scorer.infer(encoded)
    sync(device)
    return 1000 * (encoded_at - started), 1000 * (time.perf_counter() - encoded_at)


def phases(scorer: Scorer, requests: list[list[Pair]], device: torch.device) -> dict:
    calls = [timed_call(scorer, pairs, device) for pairs in requests]
    single = [timed_call(scorer, pairs[:1], device) for pairs in requests * 3]
    run = scorer.score(requests[-1]).run
    return {
        "request_encode_ms": round(statistics.median(c[0] for c in calls), 2),
        "request_infer_ms": round(statistics.median(c[1] for c in calls), 2),
        "single_pair_encode_ms": round(statistics.median(c[0] for c in single), 3),
        "single_pair_infer_ms": round(statistics.median(c[1] for c in single), 2),
        "micro_batches_last_request": run.micro_batches if run else None,
    }


def tokenizer_entry_points(scorer: Scorer, requests: list[list[Pair]], rounds: int = 5) -> dict:
    """Median ms per request of the tokenizer's batch calls, the two taken in turn, and whether their ids agree."""
    texts = [[p.document for p in pairs] for pairs in requests]
    timings: dict[str, list[float]] = {"encode_batch": [], "encode_batch_fast": []}
    same = True
    for _ in range(rounds):
        for batch in texts:
            ids = {}
            for method, samples in timings.items():
                started = time.perf_counter()
                ids[method] = [e.ids for e in getattr(scorer.tokenizer, method)(batch, add_special_tokens=False)]
                samples.append(1000 * (time.perf_counter() - started))
            same = same and ids["encode_batch"] == ids["encode_batch_fast"]
    result = {f"tokenizer_{method}_ms": round(statistics.median(samples), 2) for method, samples in timings.items()}
    result["tokenizer_fast_same_ids"] = same
    return result


def gpu_busy(scorer: Scorer, requests: list[list[Pair]], device: torch.device, table: Path) -> dict:
    """Kernel time over wall time, for whole requests and for single pairs."""
    result = {}
    for label, batches in (("request", requests[:3]), ("single_pair", [r[:1] for r in requests[:10]])):
        sync(device)
        with profile(activities=ACTIVITIES[device.type]) as prof:
            started = time.perf_counter()
            for pairs in batches:
                scorer.score(pairs)
            sync(device)
            wall = time.perf_counter() - started
        averages = prof.key_averages()
        # Kernels only: an op's own row repeats the time of the kernels it launched.
        kernel_us = sum(e.self_device_time_total for e in averages if e.device_type == DeviceType.CUDA)
        result[f"{label}_wall_ms"] = round(1000 * wall / len(batches), 2)
        result[f"{label}_gpu_kernel_ms"] = round(kernel_us / 1000 / len(batches), 2)
        result[f"{label}_gpu_busy"] = round(kernel_us / 1e6 / wall, 3)
        if label == "request" and kernel_us:
            result["kernel_shares"] = kernel_shares(averages, kernel_us)
        sort_key = "self_cpu_time_total" if device.type == "cpu" else "self_device_time_total"
        with table.open("a") as out:
            out.write(f"== {label}: {len(batches)} calls, {wall * 1000:.1f} ms wall ==\n")
            out.write(averages.table(sort_by=sort_key, row_limit=18) + "\n")
    return result


def kernel_shares(averages, kernel_us: float) -> dict[str, float]:
    """Each kind's share of the summed kernel time (KERNEL_KINDS; the rest is "other")."""
    shares = {name: 0.0 for name, _ in KERNEL_KINDS} | {"other": 0.0}
    for event in averages:
        if event.device_type != DeviceType.CUDA:
            continue
        kind = next((name for name, pattern in KERNEL_KINDS if pattern.search(event.key)), "other")
        shares[kind] += event.self_device_time_total
    return {kind: round(us / kernel_us, 3) for kind, us in shares.items()}


def throughput(scorers: list[Scorer], requests: list[list[Pair]], device: torch.device) -> float:
    """Pairs/s with one thread per scorer, the threads sharing the requests."""
    cursor = iter(range(len(requests) * 2))
    lock = threading.Lock()
    done = [0]

    def worker(scorer: Scorer) -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            scorer.score(requests[index % len(requests)])
            with lock:
                done[0] += len(requests[index % len(requests)])

    for scorer in scorers:  # new shapes grow the allocator's pools: not part of the measurement
        for pairs in requests:
            scorer.score(pairs)
    sync(device)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in scorers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sync(device)
    return round(done[0] / (time.perf_counter() - started), 1)


def with_cuda_graphs(eager_scorer: Scorer, config: EngineConfig, requests: list[list[Pair]], device: torch.device,
                     table: Path) -> dict:
    """The same model loaded again with CUDA graph replay: capture cost, speed, and score changes."""
    eager = [eager_scorer.score(p).score for p in requests[:2]] + [eager_scorer.score(r[:1]).score for r in requests]
    started = time.perf_counter()
    scorer = load_scorer(dataclasses.replace(config, cuda_graphs=True), device)
    result = {"graphs_load_s": round(time.perf_counter() - started, 2)}
    graphed = scorer.graphs
    replayed = [scorer.score(pairs).score for pairs in requests[:2]] + [scorer.score(r[:1]).score for r in requests]
    sync(device)
    result["graphs_max_abs_diff_vs_eager"] = float(max(abs(a - b).max() for a, b in zip(eager, replayed)))
    result["graphs_pairs_per_s"] = throughput([scorer], requests, device)
    result.update({f"graphs_{k}": v for k, v in phases(scorer, requests, device).items() if "infer" in k})
    result.update({f"graphs_{k}": v for k, v in gpu_busy(scorer, requests, device, table).items()})
    result["graphs_captured"] = len(graphed.graphs)
    result["graphs_disabled"] = graphed.disabled
    return result


def packed_side_by_side(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Padded micro-batches (CUDA graphs too with --cuda-graphs) against packed batches, in turn, in one process."""
    from rerank_engine import packed as packed_module

    kind, max_length = MODELS[name]
    base = {"scorer": kind, "weights_path": str(args.models_dir / name), "max_length": max_length}
    scorers = {
        "padded": load_scorer(EngineConfig(**base, packed="false", cuda_graphs=args.cuda_graphs), device),
        "packed": load_scorer(EngineConfig(**base, packed="true"), device),
    }
    requests = workload(args.requests, args.docs)
    probe = requests[:2] + [r[:1] for r in requests[:4]]
    raw = {label: [s.score(p).raw_score for p in probe] for label, s in scorers.items()}
    fp32_diffs: dict[str, float] = {}
    kernel, packed_module.flash_varlen = packed_module.flash_varlen, None
    try:
        span_loop = [scorers["packed"].score(p).raw_score for p in probe]
    finally:
        packed_module.flash_varlen = kernel
    if args.fp32_reference:
        # Half-precision rounding alone moves random-weight logits; the float32 model says by how much,
        # so the packed path's distance can be read against the padded path's.
        reference = load_scorer(EngineConfig(**base, packed="false", dtype="float32"), device)
        want = [reference.score(p) for p in probe]
        del reference
        for label, scorer in scorers.items():
            got = [scorer.score(p) for p in probe]
            for field in ("score", "raw_score"):
                result_key = f"{label}_{field}_max_abs_diff_vs_fp32"
                fp32_diffs[result_key] = float(max(abs(getattr(g, field) - getattr(w, field)).max()
                                                   for g, w in zip(got, want)))
        fp32_diffs["fp32_raw_score_std"] = float(np.std(np.concatenate([w.raw_score for w in want])))
    result = {
        **fp32_diffs,
        "packed_max_abs_diff_vs_padded": float(max(abs(a - b).max() for a, b in zip(raw["padded"], raw["packed"]))),
        "packed_kernel_max_abs_diff_vs_span_loop": float(
            max(abs(a - b).max() for a, b in zip(raw["packed"], span_loop))
        ),
    }
    for round_ in (1, 2):
        for label, scorer in scorers.items():
            result[f"{label}_pairs_per_s_round{round_}"] = throughput([scorer], requests, device)
    for label, scorer in scorers.items():
        result.update({f"{label}_{k}": v for k, v in phases(scorer, requests, device).items() if "infer" in k})
        run = scorer.score(requests[-1]).run
        result[f"{label}_padding_ratio"] = round(1 - run.tokens / run.padded_tokens, 3) if run else None
    if args.threads > 1:
        copies = [scorers["packed"]] + [load_scorer(EngineConfig(**base, packed="true"), device)
                                        for _ in range(args.threads - 1)]
        result[f"packed_pairs_per_s_{args.threads}_threads_{args.threads}_copies"] = throughput(copies, requests, device)
    result.update({f"packed_{k}": v for k, v in
                   gpu_busy(scorers["packed"], requests, device, args.out / f"{name}_packed_ops.txt").items()})
    if device.type == "cuda":
        result["peak_gpu_mib_both"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return result


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def profile_model(name: str, args: argparse.Namespace, device: torch.device, quantization: str = "none") -> dict:
    kind, max_length = MODELS[name]
    config = EngineConfig(scorer=kind, weights_path=str(args.models_dir / name), max_length=max_length,
                          quantization=quantization)
    if device.type == "cuda" and torch.cuda.is_initialized():  # the peak below is this load's and model's alone
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    scorer = load_scorer(config, device)
    requests = workload(args.requests, args.docs)
    scorer.score(requests[0])
    sync(device)
    label = name if quantization == "none" else f"{name}-{quantization}"
    result = {"model": label, "weights": "random (real architecture and size)", "device": device_name(device),
              "docs_per_request": args.docs, "dtype": str(config.torch_dtype(device)), "quantization": quantization}
    result.update(phases(scorer, requests, device))
    result.update(tokenizer_entry_points(scorer, requests))
    result.update(gpu_busy(scorer, requests, device, args.out / f"{label}_ops.txt"))
    default_budget = scorer.max_batch_tokens
    for budget in args.budgets:
        scorer.max_batch_tokens = budget
        result[f"pairs_per_s_budget_{budget}"] = throughput([scorer], requests, device)
    scorer.max_batch_tokens = default_budget
    if args.threads > 1:
        result["pairs_per_s_1_thread"] = throughput([scorer], requests, device)
        copies = [scorer] + [load_scorer(config, device) for _ in range(args.threads - 1)]
        for copy in copies[1:]:
            copy.score(requests[0])
        result[f"pairs_per_s_{args.threads}_threads_{args.threads}_copies"] = throughput(copies, requests, device)
        del copies
    if args.cuda_graphs:
        result.update(with_cuda_graphs(scorer, config, requests, device, args.out / f"{label}_graphs_ops.txt"))
    if args.compile:
        started = time.perf_counter()
        # The module the scorer calls: Qwen3's decoder (the LM head is never run whole), else the model.
        network = getattr(scorer.model, "model", scorer.model)
        network.forward = torch.compile(network.forward, dynamic=True)
        scorer.score(requests[0])
        scorer.score(requests[0][:1])
        result["compile_s"] = round(time.perf_counter() - started, 1)
        result["compiled_pairs_per_s"] = throughput([scorer], requests, device)
        single = [timed_call(scorer, pairs[:1], device) for pairs in requests * 3]
        result["compiled_single_pair_infer_ms"] = round(statistics.median(c[1] for c in single), 2)
    if device.type == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        result["peak_gpu_mib_note"] = "torch.cuda.max_memory_allocated from before loading to the end"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(MODELS))
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--budgets", type=int, nargs="*", default=[32768, 8192, 4096])
    parser.add_argument("--threads", type=int, default=2, help="scorer copies fed in parallel (1: skip)")
    parser.add_argument("--cuda-graphs", action="store_true", help="also measure CUDA graph replay (GPU only)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the forward")
    parser.add_argument("--packed-ab", action="store_true", help="only: padded against packed batches, side by side")
    parser.add_argument("--fp32-reference", action="store_true", help="with --packed-ab: both against a float32 model")
    parser.add_argument("--quantization", nargs="+", default=["none"], choices=["none", "fp8"],
                        help="each model in each precision in turn (fp8: the engine's E4M3 recipe)")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("bench_results/profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results = []
    for name in args.names:
        for quantization in [None] if args.packed_ab else args.quantization:
            if quantization is None:
                results.append({"model": name, "device": device_name(device), **packed_side_by_side(name, args, device)})
            else:
                results.append(profile_model(name, args, device, quantization))
            print(json.dumps(results[-1]), flush=True)
            (args.out / "profile.json").write_text(json.dumps(results, indent=2) + "\n")

if __name__ == "__main__":
    main()
