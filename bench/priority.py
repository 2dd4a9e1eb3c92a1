"""Request priority under load: do interactive requests keep their latency
while bulk clients saturate the model?

Against a running gateway, three measurements of single-pair `/v1/rerank`
probes, sent one at a time:
  idle         interactive probes (priority -1) on the idle server: the reference
  interactive  the same probes while `--low-concurrency` bulk clients (priority +1, each request
               `--low-documents` documents, closed loop, in a separate process) keep the model busy
  same         probes at the bulk clients' own priority, alternated with the interactive ones: what
               a probe sees without priority, and the proof that the load saturated the queue
The criterion of issue 17: the interactive p50 under load within 2x the idle p50.

  reranker serve &                                   # or any gateway; the model must be loaded
  python -m bench.priority --url http://127.0.0.1:8000 --model bge --low-concurrency 16 \
      --low-documents 64 --out priority.json

Prints one summary line and writes the whole result as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import httpx

from bench.loadgen import percentile

INTERACTIVE, BULK = -1, 1
QUERY = "what do giant pandas eat?"
TEXTS = [
    "Giant pandas eat bamboo almost exclusively, up to 38 kg a day.",
    "The Eiffel tower was built for the 1889 World's Fair in Paris.",
    "Red pandas are not closely related to giant pandas.",
    "Bamboo forests in Sichuan are the giant panda's home.",
    "Tea is grown on the hills of Yunnan and Fujian.",
    "Brown bears hibernate through the winter in dens.",
    "A panda's pseudo-thumb helps it grip bamboo stalks.",
    "Paris has more than twenty bridges over the Seine.",
]


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _body(documents: int, priority: int, model: str | None) -> dict:
    body = {"query": QUERY, "documents": [TEXTS[i % len(TEXTS)] + f" ({i})" for i in range(documents)],
            "priority": priority}
    return body if model is None else {**body, "model": model}


async def _probe(client: httpx.AsyncClient, priority: int, model: str | None) -> float:
    started = time.perf_counter()
    response = await client.post("/v1/rerank", json=_body(1, priority, model))
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def _stats(seconds: list[float]) -> dict:
    return {"n": len(seconds), "p50_ms": round(percentile(seconds, 50) * 1000, 2),
            "p90_ms": round(percentile(seconds, 90) * 1000, 2), "mean_ms": round(statistics.fmean(seconds) * 1000, 2)}


def _load(url: str, api_key: str | None, model: str | None, concurrency: int, documents: int, stop, counts) -> None:
    """The bulk clients, in their own process so that their JSON work never delays a probe's timing."""

    async def client_loop(client: httpx.AsyncClient) -> None:
        body = _body(documents, BULK, model)
        while not stop.is_set():
            response = await client.post("/v1/rerank", json=body)
            with counts.get_lock():
                counts[0 if response.status_code == 200 else 1] += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=600, headers=_headers(api_key), limits=limits) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))

    asyncio.run(main())


async def run(url: str, api_key: str | None, model: str | None, concurrency: int, documents: int, probes: int,
              warmup_s: float) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600, headers=_headers(api_key)) as client:
        for _ in range(5):  # connection, first-call costs
            await _probe(client, INTERACTIVE, model)
        idle = [await _probe(client, INTERACTIVE, model) for _ in range(probes)]

        context = multiprocessing.get_context("spawn")
        stop, counts = context.Event(), context.Array("i", 2)
        load = context.Process(target=_load, args=(url, api_key, model, concurrency, documents, stop, counts))
        load.start()
        try:
            await asyncio.sleep(warmup_s)  # the bulk clients fill the queue
            done_before, started = counts[0], time.perf_counter()
            interactive, same = [], []
            for _ in range(probes):
                interactive.append(await _probe(client, INTERACTIVE, model))
                same.append(await _probe(client, BULK, model))
            window = time.perf_counter() - started
            bulk_done = counts[0] - done_before
        finally:
            stop.set()
            load.join(timeout=600)
    result = {
        "url": url, "model": model, "low_concurrency": concurrency, "low_documents": documents, "probes": probes,
        "idle": _stats(idle), "interactive_under_load": _stats(interactive), "same_priority_under_load": _stats(same),
        "bulk_pairs_per_s": round(bulk_done * documents / window, 1), "bulk_errors": counts[1],
    }
    result["interactive_vs_idle_p50"] = round(result["interactive_under_load"]["p50_ms"] / result["idle"]["p50_ms"], 2)
    result["same_vs_idle_p50"] = round(result["same_priority_under_load"]["p50_ms"] / result["idle"]["p50_ms"], 2)
    result["within_2x"] = result["interactive_vs_idle_p50"] <= 2.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    parser.add_argument("--api-key", help="a key with the score scope, where the gateway has keys")
    parser.add_argument("--model", help="a loaded model (alias or name); default: the active one")
    parser.add_argument("--low-concurrency", type=int, default=16, help="bulk clients")
    parser.add_argument("--low-documents", type=int, default=64, help="documents per bulk request")
    parser.add_argument("--probes", type=int, default=40, help="probes per measurement")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before the first probe")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.url, args.api_key, args.model, args.low_concurrency, args.low_documents,
                             args.probes, args.warmup_s))
    print(f"priority: idle p50 {result['idle']['p50_ms']} ms; under load ({args.low_concurrency} bulk clients x "
          f"{args.low_documents} documents, {result['bulk_pairs_per_s']} pairs/s) interactive p50 "
          f"{result['interactive_under_load']['p50_ms']} ms ({result['interactive_vs_idle_p50']}x idle), same-priority "
          f"p50 {result['same_priority_under_load']['p50_ms']} ms ({result['same_vs_idle_p50']}x idle); "
          f"within 2x: {result['within_2x']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
