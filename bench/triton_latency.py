"""One client's single pairs straight to Triton's gRPC API, one after another:
Triton's own latency for a lone request, and how often it stalls.

  python -m bench.triton_latency --triton-url 127.0.0.1:8101 --model bge-reranker-base --requests 300 \\
      --label shipped --out result.json

Several `--triton-url`s (each with its `--label`) are measured in turn, round by
round (`--rounds`), so that every configuration sees the same machine noise.
A stall is an answer slower than `--stall-ms` (default 400: Triton's dynamic
batcher sleeps 500 ms when it misses a hand-over).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from gateway.serving.triton import TritonBackend


async def measure(url: str, model: str, requests: int) -> list[float]:
    backend = TritonBackend(url, 60.0, 60.0)
    try:
        await backend.score(model, ["warm-up"], ["warm-up"])
        latencies = []
        for i in range(requests):
            started = time.perf_counter()
            await backend.score(model, ["what is the weather today?"], [f"document {i}: sunny and warm"])
            latencies.append(time.perf_counter() - started)
        return latencies
    finally:
        await backend.close()


def summary(latencies: list[float], stall_s: float) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: round(ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000, 2)  # noqa: E731
    return {"requests": len(ordered), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2), "stalls": sum(t > stall_s for t in ordered),
            "requests_per_s": round(len(ordered) / sum(ordered), 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-url", action="append", required=True)
    parser.add_argument("--label", action="append")
    parser.add_argument("--model", default="bge-reranker-base")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stall-ms", type=float, default=400.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    labels = args.label or args.triton_url
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for round_ in range(args.rounds):
        for url, label in zip(args.triton_url, labels):
            result = summary(asyncio.run(measure(url, args.model, args.requests)), args.stall_ms / 1000)
            runs[label].append(result)
            print(f"round {round_ + 1} {label}: {result}", flush=True)
    data = {"model": args.model, "stall_ms": args.stall_ms, "runs": runs}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
