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
The idle and loaded measurements alternate over `--rounds` rounds (the bulk
clients pause, drain, then resume); each round's loaded p50 is compared with
its own idle p50, and the median of the rounds decides, so that what else a
shared machine runs weighs on both sides of each comparison alike.

  reranker serve &                                   # or any gateway; the model must be loaded
  python -m bench.priority --url http://127.0.0.1:8000 --model bge --low-concurrency 16 \
      --low-documents 64 --out priority.json
  python -m bench.priority --serve bge --models-dir /tmp/models ...   # starts its own stack, stops it after

Prints one summary line and writes the whole result as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
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


def _load(url: str, api_key: str | None, model: str | None, concurrency: int, documents: int, stop, running,
          counts) -> None:
    """The bulk clients, in their own process so that their JSON work never delays a probe's timing. They send
    while `running` is set; counts: [answered 200, failed, in flight]. Niced: the bulk clients stand for other
    machines, and on a small host their own CPU work should not be what slows the probes."""
    os.nice(10)

    async def client_loop(client: httpx.AsyncClient) -> None:
        body = _body(documents, BULK, model)
        while not stop.is_set():
            if not running.is_set():
                await asyncio.sleep(0.01)
                continue
            with counts.get_lock():
                counts[2] += 1
            try:
                response = await client.post("/v1/rerank", json=body)
            finally:
                with counts.get_lock():
                    counts[2] -= 1
            with counts.get_lock():
                counts[0 if response.status_code == 200 else 1] += 1

    async def main() -> None:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=600, headers=_headers(api_key), limits=limits) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))

    asyncio.run(main())


async def run(url: str, api_key: str | None, model: str | None, concurrency: int, documents: int, probes: int,
              warmup_s: float, rounds: int = 5) -> dict:
    idle, interactive, same = [], [], []
    round_ratios = []  # interactive p50 under load over idle p50, each round on its own
    bulk_done, window = 0, 0.0
    context = multiprocessing.get_context("spawn")
    stop, running, counts = context.Event(), context.Event(), context.Array("i", 3)
    load = context.Process(target=_load, args=(url, api_key, model, concurrency, documents, stop, running, counts))
    load.start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600, headers=_headers(api_key)) as client:
            for _ in range(5):  # connection, first-call costs
                await _probe(client, INTERACTIVE, model)
            per_round = max(probes // rounds, 1)
            for _ in range(rounds):
                while counts[2]:  # the last round's bulk requests drain: the server is idle
                    await asyncio.sleep(0.01)
                round_idle = [await _probe(client, INTERACTIVE, model) for _ in range(per_round)]
                running.set()
                await asyncio.sleep(warmup_s)  # the bulk clients fill the queue
                if not load.is_alive():
                    raise RuntimeError(f"the bulk clients' process exited with code {load.exitcode}")
                done_before, started = counts[0], time.perf_counter()
                round_interactive = []
                for _ in range(per_round):
                    round_interactive.append(await _probe(client, INTERACTIVE, model))
                    same.append(await _probe(client, BULK, model))
                idle += round_idle
                interactive += round_interactive
                round_ratios.append(round(percentile(round_interactive, 50) / percentile(round_idle, 50), 2))
                window += time.perf_counter() - started
                bulk_done += counts[0] - done_before
                running.clear()
    finally:
        running.clear()
        stop.set()
        load.join(timeout=600)
    result = {
        "url": url, "model": model, "low_concurrency": concurrency, "low_documents": documents,
        "probes": len(idle), "rounds": rounds,
        "idle": _stats(idle), "interactive_under_load": _stats(interactive), "same_priority_under_load": _stats(same),
        "bulk_pairs_per_s": round(bulk_done * documents / window, 1), "bulk_errors": counts[1],
    }
    result["interactive_vs_idle_p50"] = round(result["interactive_under_load"]["p50_ms"] / result["idle"]["p50_ms"], 2)
    result["same_vs_idle_p50"] = round(result["same_priority_under_load"]["p50_ms"] / result["idle"]["p50_ms"], 2)
    # Each round's interactive p50 against the idle p50 measured just before it, under the same conditions on
    # the machine; the median of the rounds is the criterion (a shared host's other work comes and goes).
    result["round_ratios"] = round_ratios
    result["median_round_ratio"] = round(statistics.median(round_ratios), 2)
    result["within_2x"] = result["median_round_ratio"] <= 2.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway")
    parser.add_argument("--api-key", help="a key with the score scope, where the gateway has keys")
    parser.add_argument("--model", help="a loaded model (alias or name); default: the active one")
    parser.add_argument("--low-concurrency", type=int, default=16, help="bulk clients")
    parser.add_argument("--low-documents", type=int, default=64, help="documents per bulk request")
    parser.add_argument("--probes", type=int, default=60, help="probes per measurement, over all rounds")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load before a round's first probe")
    parser.add_argument("--rounds", type=int, default=5, help="idle and loaded measurements, alternated")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    parser.add_argument("--serve", metavar="MODEL",
                        help="start `reranker serve` with this model on free loopback ports instead of --url")
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("RERANKER_MODELS_DIR", "models")),
                        help="with --serve: the weights folder")
    args = parser.parse_args(argv)
    serve = None
    if args.serve:
        from bench.e2e import ServeProcess
        from bench.models import MODEL_REPOSITORY, resolve

        name = resolve(args.serve).name
        log_path = (args.out.parent if args.out else Path(".")) / "priority-serve.log"
        serve = ServeProcess(MODEL_REPOSITORY, args.models_dir, name, log_path, timeout_s=900)
        args.url, args.model = serve.url, args.model or name
    try:
        result = asyncio.run(run(args.url, args.api_key, args.model, args.low_concurrency, args.low_documents,
                                 args.probes, args.warmup_s, args.rounds))
    finally:
        if serve is not None:
            serve.stop()
    print(f"priority: idle p50 {result['idle']['p50_ms']} ms; under load ({args.low_concurrency} bulk clients x "
          f"{args.low_documents} documents, {result['bulk_pairs_per_s']} pairs/s) interactive p50 "
          f"{result['interactive_under_load']['p50_ms']} ms ({result['interactive_vs_idle_p50']}x idle), same-priority "
          f"p50 {result['same_priority_under_load']['p50_ms']} ms ({result['same_vs_idle_p50']}x idle); "
          f"rounds {result['round_ratios']}, median {result['median_round_ratio']}x: within 2x: {result['within_2x']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
