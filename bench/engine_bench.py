"""The scoring engine called directly (no Triton, no gateway) on one device:
pairs/s, tokens/s and peak memory for requests of 1 query x N documents, and
the largest score difference of the serving dtype against float32 on the same
weights. Prints one JSON line per model.

Workload (issue 6's, from bench.workload): a 16-token query, documents of 64-256 tokens.

  python -m bench.engine_bench --models-dir /tmp/models --requests 20 --docs 100 \
      bge-reranker-base Qwen3-Reranker-4B
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.workload import generate
from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.scoring import Pair

# folder -> (scorer kind, max_length), as in model_repository/*/config.pbtxt
MODELS = {
    "bge-reranker-base": ("cross_encoder", 512),
    "Qwen3-Reranker-4B": ("qwen3_reranker", 8192),
    "Qwen3-Reranker-8B": ("qwen3_reranker", 8192),
    "all-MiniLM-L6-v2": ("bi_encoder", 256),
}


def workload(requests: int, docs: int, seed: int = 0) -> list[list[Pair]]:
    return [[Pair(r.query, d) for d in r.documents] for r in generate(requests, docs, seed)]


def bench(folder: Path, kind: str, max_length: int, requests: list[list[Pair]], device: torch.device,
          prefix_reuse: bool = True, max_batch_tokens: int = 32768, reference: bool = True) -> dict:
    config = EngineConfig(scorer=kind, weights_path=str(folder), max_length=max_length, prefix_reuse=prefix_reuse,
                          max_batch_tokens=max_batch_tokens)
    started = time.perf_counter()
    scorer = load_scorer(config, device)
    load_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats(device)
    scorer.score(requests[0])  # warm-up at the real batch shape
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    tokens = 0
    served = []
    for pairs in requests:
        scores = scorer.score(pairs)
        tokens += int(scores.num_tokens.sum())
        served.append(scores.score)
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    pairs_total = sum(len(p) for p in requests)
    result = {
        "model": folder.name,
        "weights": "random (real architecture and size)",
        "dtype": str(config.torch_dtype(device)),
        **({"prefix_reuse": prefix_reuse} if kind == "qwen3_reranker" else {}),
        "max_batch_tokens": max_batch_tokens,
        "load_s": round(load_s, 1),
        "pairs_per_s": round(pairs_total / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed),
        "ms_per_request": round(1000 * elapsed / len(requests), 1), "docs_per_request": len(requests[0]),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20),
    }
    del scorer
    torch.cuda.empty_cache()
    if not reference:
        return result
    reference = load_scorer(EngineConfig(scorer=kind, weights_path=str(folder), max_length=max_length,
                                         dtype="float32"), device)
    expected = reference.score(requests[0]).score
    result["max_abs_diff_vs_fp32"] = float(np.abs(served[0] - expected).max())
    result["score_spread_fp32"] = float(np.ptp(expected))
    del reference
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(MODELS))
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--no-prefix-reuse", action="store_true",
                        help="Qwen3: run every pair's whole prompt (the before of prefix reuse)")
    parser.add_argument("--both-prefix-modes", action="store_true", help="Qwen3: measure with and without reuse")
    parser.add_argument("--max-batch-tokens", type=int, nargs="+", default=[32768],
                        help="the engine's micro-batch token budget; several values are measured in turn")
    parser.add_argument("--no-reference", action="store_true", help="skip the fp32 score comparison")
    args = parser.parse_args()
    requests = workload(args.requests, args.docs)
    device = torch.device("cuda", 0)
    modes = (True, False) if args.both_prefix_modes else (not args.no_prefix_reuse,)
    for name in args.names:
        kind, max_length = MODELS[name]
        for budget in args.max_batch_tokens:
            for reuse in modes if kind == "qwen3_reranker" else (True,):
                result = bench(args.models_dir / name, kind, max_length, requests, device, reuse, budget,
                               not args.no_reference)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
