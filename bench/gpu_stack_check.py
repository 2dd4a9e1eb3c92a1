"""End-to-end check of the stack on a GPU machine, with random-weight models
of the real sizes: `reranker serve` places the Triton instances on the GPU
(KIND_AUTO), a pair scored through gateway + Triton equals the engine's
direct score on the same GPU, and single-pair load through the gateway gives
throughput and latency at several concurrencies. Prints one JSON line per step.

  python -m bench.gpu_stack_check --models-dir /tmp/models --tokenizers ../shared/data/tokenizers \
      --workdir /tmp/check bge-reranker-base Qwen3-Reranker-4B
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import torch

from bench.load_pairs import run as load
from bench.random_models import build
from rerank_engine.scoring import Pair
from tests import stack

TRITON_NAMES = {"bge-reranker-base": "bge-reranker-base", "Qwen3-Reranker-4B": "qwen3-reranker-4b",
                "Qwen3-Reranker-8B": "qwen3-reranker-8b"}
PAIRS = [Pair("what is the capital of france", "Paris is the capital and most populous city of France."),
         Pair("今天天气如何？", "今天晴天适合外出游玩"),
         Pair("how do transformers work", "Attention lets every token look at every other token. " * 30)]


def report(step: str, **fields) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def gpu_memory_mib() -> list[int]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(TRITON_NAMES))
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--tokenizers", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        started = time.perf_counter()
        build(name, args.models_dir, args.tokenizers, "cuda", torch.bfloat16)
        report("random_weights", model=name, seconds=round(time.perf_counter() - started, 1))
    torch.cuda.empty_cache()

    log = args.workdir / "serve.log"
    first = TRITON_NAMES[args.names[0]]
    serve = stack.start_serve(stack.REPO_ROOT / "model_repository", args.models_dir, log, model=first)
    try:
        with httpx.Client(base_url=serve.url(), timeout=600) as client:
            for name in args.names:
                model = TRITON_NAMES[name]
                switched = client.post("/switch_model", json={"model_name": model}).json()
                placement = re.findall(rf"{model}: \w+ on (\S+)", log.read_text())
                report("switch", model=model, load_time_s=switched.get("load_time_s"), placement=placement,
                       gpu_memory_mib=gpu_memory_mib())
                if not placement or not placement[-1].startswith("cuda"):
                    raise SystemExit(f"{model} was not placed on a GPU: {switched}")
                served = [client.post("/rerank", json={"query": p.query, "document": p.document}).json()["score"]
                          for p in PAIRS]
                scorer = stack.engine_scorer(stack.REPO_ROOT / "model_repository", args.models_dir, model, "cuda:0")
                direct = [float(scorer.score([p]).score[0]) for p in PAIRS]
                del scorer
                torch.cuda.empty_cache()
                report("parity", model=model, served=served, engine_direct=direct,
                       max_abs_diff=max(abs(a - b) for a, b in zip(served, direct)))
                for concurrency in args.concurrency:
                    result = asyncio.run(load(serve.url(), args.requests, concurrency, (64, 256)))
                    report("load", model=model, weights="random (real architecture and size)", **result)
    finally:
        code = stack.stop(serve.process, signal.SIGINT)
        report("stopped", exit_code=code, gpu_memory_mib=gpu_memory_mib())


if __name__ == "__main__":
    main()
