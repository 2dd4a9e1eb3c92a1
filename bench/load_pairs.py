"""Closed-loop load of single pairs against the gateway's `POST /rerank`
(the seed's workload): C concurrent clients, N requests in all; prints
throughput and latency percentiles as one JSON line.

  python -m bench.load_pairs --url http://localhost:8000 --requests 2000 --concurrency 1 8 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time

import httpx

WORDS = "the of and to in is was for on that with as by at from his an were are which this be".split()


def _document(rng: random.Random, tokens: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


async def run(url: str, requests: int, concurrency: int, doc_tokens: tuple[int, int]) -> dict:
    rng = random.Random(concurrency)
    bodies = [{"query": "what is the capital of france", "document": _document(rng, rng.randint(*doc_tokens))}
              for _ in range(requests)]
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post("/rerank", json=body)
                latencies.append(time.perf_counter() - started)
                failures += response.status_code != 200

        await client.post("/rerank", json=bodies[0])  # warm the connection and the model
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency, "requests": requests, "failures": failures,
        "pairs_per_s": round(requests / elapsed, 1),
        "p50_ms": round(cuts[49] * 1000, 2), "p90_ms": round(cuts[89] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--doc-tokens", type=int, nargs=2, default=(64, 256), metavar=("MIN", "MAX"))
    args = parser.parse_args()
    for concurrency in args.concurrency:
        print(json.dumps(asyncio.run(run(args.url, args.requests, concurrency, tuple(args.doc_tokens)))), flush=True)


if __name__ == "__main__":
    main()
