"""The score cache (issue 25), off against on, side by side in one run on one
Triton: a Zipf-distributed workload of about `--distinct` distinct pairs of
which `--repeat-share` of the pairs sent are repeats, 1 query x 20-100
documents per request, sent by `--concurrency` closed-loop clients through
three gateways started one after the other on the same Triton:

  off      the cache off (RERANKER_CACHE unset): every pair reaches the model
  memory   RERANKER_CACHE=true: the in-process tier
  redis    RERANKER_CACHE_URL to a redis-server this benchmark starts, with
           RERANKER_CACHE_MAX_BYTES=0: every hit is a Redis round trip
           (left out, and said so, where no redis-server can be found)

Each gateway starts empty. Then each answers an all-hit 100-document request
`--all-hit-requests` times, one at a time: its p50, as the client and as the
gateway (`x-total-time`) see it. `--rounds N` runs the three N times in turn;
the table shows each variant's median round and its ratio to the cache-off
run of the same round.

The workload: queries are drawn with Zipf popularity (exponent `--zipf`);
each query has a fixed pool of candidate documents, and a request sends a
random 20-100 of them in random order (retrieval results that differ from one
call to the next). The number of queries is chosen so that the sequence has
`--distinct` distinct pairs when `--distinct / (1 - --repeat-share)` pairs
have been sent. Reproducible from `--seed`.

  python -m bench.cache_bench minilm --models-dir models --concurrency 8 --out results/cache_bench.json

Prints a table and writes the whole result as JSON (`--out`). Needs httpx and
the gateway's own packages; Triton and the models as `reranker serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.loadgen import percentile
from bench.models import MODEL_REPOSITORY, REPO_ROOT, resolve
from bench.workload import WORDS
from launcher.process import free_ports, stop, wait_until_live
from tests.stack import start_redis  # the tests' own way to run one, also for the benchmark

POOL = 150
"""Candidate documents per query."""
DOCS_PER_REQUEST = (20, 100)


@dataclass(frozen=True)
class Request:
    query: str
    documents: tuple[str, ...]


def _text(rng: random.Random, words: tuple[int, int], tag: str) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + f" {tag}"


def _sequence(queries: int, pairs: int, zipf: float, seed: int, doc_words: tuple[int, int]) -> list[Request]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) ** zipf for rank in range(queries)]
    cumulative = [sum(weights[: i + 1]) for i in range(queries)]
    texts = random.Random(seed + 1)
    query_text = [_text(texts, (12, 14), f"q{q}?") for q in range(queries)]
    documents: dict[tuple[int, int], str] = {}
    requests, sent = [], 0
    while sent < pairs:
        q = bisect.bisect_left(cumulative, rng.random() * cumulative[-1])
        count = rng.randint(*DOCS_PER_REQUEST)
        chosen = rng.sample(range(POOL), count)
        for d in chosen:
            if (q, d) not in documents:
                documents[(q, d)] = _text(random.Random(seed * 1_000_003 + q * POOL + d), doc_words, f"d{q}.{d}")
        requests.append(Request(query_text[q], tuple(documents[(q, d)] for d in chosen)))
        sent += count
    return requests


def distinct_pairs(requests: list[Request]) -> int:
    return len({(r.query, d) for r in requests for d in r.documents})


def zipf_workload(distinct: int, repeat_share: float, zipf: float, seed: int,
                  doc_words: tuple[int, int]) -> list[Request]:
    """The sequence whose query count makes its distinct pairs closest to `distinct`."""
    pairs = round(distinct / (1 - repeat_share))
    low, high = 1, max(distinct // DOCS_PER_REQUEST[0], 2)
    while high - low > 1:  # fewer queries, more repeats: distinct pairs grow with the query count
        middle = (low + high) // 2
        if distinct_pairs(_sequence(middle, pairs, zipf, seed, (1, 1))) < distinct:
            low = middle
        else:
            high = middle
    best = min((low, high), key=lambda n: abs(distinct_pairs(_sequence(n, pairs, zipf, seed, (1, 1))) - distinct))
    return _sequence(best, pairs, zipf, seed, doc_words)


class Processes:
    """One Triton, and gateways in front of it, on free loopback ports; logs in `log_dir`."""

    def __init__(self, repository: Path, models_dir: Path, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.http, self.grpc, metrics = free_ports(3)
        self.triton = self._start(["triton", f"--model-repository={repository.resolve()}",
                                   f"--models-dir={models_dir.resolve()}", f"--triton-http-port={self.http}",
                                   f"--triton-grpc-port={self.grpc}", f"--triton-metrics-port={metrics}"],
                                  "triton.log", {})
        wait_until_live(f"http://127.0.0.1:{self.http}/v2/health/live", self.triton, 300)

    def _start(self, args: list[str], log: str, env: dict[str, str]) -> subprocess.Popen:
        handle = (self.log_dir / log).open("w")
        return subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], stdout=handle,
                                stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, **env},
                                start_new_session=True)

    def gateway(self, name: str, model: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
        (port,) = free_ports(1)
        env = {"RERANKER_REQUEST_TIMEOUT_S": "600", **env}
        process = self._start(["gateway", "--host=127.0.0.1", f"--port={port}", f"--triton-url=127.0.0.1:{self.grpc}",
                               f"--model={model}"], f"gateway-{name}.log", env)
        url = f"http://127.0.0.1:{port}"
        wait_until_live(f"{url}/health/ready", process, 1800)
        return process, url

    def close(self) -> None:
        stop(self.triton, signal.SIGINT)


async def run_workload(url: str, requests: list[Request], concurrency: int) -> dict:
    latencies, hits, failures = [], 0, []
    queue = iter(requests)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for number in range(3):  # connections and first calls, without touching the cache
            warm = {"query": f"warm-up {number}", "documents": ["warm-up"] * 20, "cache": False}
            (await client.post("/v1/rerank", json=warm)).raise_for_status()

        async def worker() -> None:
            nonlocal hits
            for request in queue:
                body = {"query": request.query, "documents": list(request.documents)}
                started = time.perf_counter()
                response = await client.post("/v1/rerank", json=body)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                hits += int(response.headers.get("x-cache-hits", 0))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    pairs = sum(len(r.documents) for r in requests)
    return {
        "requests": len(requests), "failures": len(failures), "errors": failures[:3], "pairs": pairs,
        "elapsed_s": round(elapsed, 2), "pairs_per_s": round(pairs / elapsed, 1),
        "requests_per_s": round(len(requests) / elapsed, 2), "hits": hits, "hit_share": round(hits / pairs, 3),
        "pairs_to_model": pairs - hits,
        "p50_ms": round(percentile(latencies, 50) * 1000, 1), "p90_ms": round(percentile(latencies, 90) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
    }


async def all_hit_latency(url: str, request: Request, count: int) -> dict:
    """One 100-document request, already answered once, sent `count` times one at a time."""
    body = {"query": request.query, "documents": list(request.documents)}
    client_s, server_ms, hits = [], [], []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for _ in range(2):
            (await client.post("/v1/rerank", json=body)).raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            response = await client.post("/v1/rerank", json=body)
            client_s.append(time.perf_counter() - started)
            response.raise_for_status()
            server_ms.append(float(response.headers["x-total-time"]))
            hits.append(int(response.headers.get("x-cache-hits", 0)))
    return {"requests": count, "documents": len(request.documents), "all_hits": all(h == len(request.documents)
                                                                                    for h in hits),
            "client_p50_ms": round(percentile(client_s, 50) * 1000, 2),
            "client_p90_ms": round(percentile(client_s, 90) * 1000, 2),
            "gateway_p50_ms": round(percentile(server_ms, 50), 2)}


VARIANTS = {
    "off": {},
    "memory": {"RERANKER_CACHE": "true"},
    "redis": {"RERANKER_CACHE_MAX_BYTES": "0", "RERANKER_CACHE_SECRET": "cache-bench"},
}


def summarize(rounds: list[dict]) -> dict:
    """Per variant: the round with the median pairs/s, each round's pairs/s, and its ratio to the same
    round's cache-off run (rounds alternate the variants, so a busy host weighs on both sides of a ratio)."""
    summary = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds if "workload" in r[name]]
        if not runs:
            summary[name] = rounds[0][name]
            continue
        ordered = sorted(runs, key=lambda run: run["workload"]["pairs_per_s"])
        median = ordered[(len(ordered) - 1) // 2]
        ratios = [round(r[name]["workload"]["pairs_per_s"] / r["off"]["workload"]["pairs_per_s"], 2)
                  for r in rounds if "workload" in r[name] and "workload" in r.get("off", {})]
        summary[name] = {**median, "pairs_per_s_rounds": [r["workload"]["pairs_per_s"] for r in runs],
                         "vs_off_rounds": ratios}
    return summary


def table(result: dict) -> str:
    lines = ["| cache | pairs/s (median round) | vs off, each round | hit share | pairs to the model | p50 ms | "
             "p99 ms | all-hit 100 docs p50 ms (client / gateway) |", "|---|---|---|---|---|---|---|---|"]
    for name, variant in result["variants"].items():
        if "skipped" in variant:
            lines.append(f"| {name} | skipped: {variant['skipped']} | | | | | | |")
            continue
        w, a = variant["workload"], variant["all_hit"]
        ratios = ", ".join(f"{r:.2f}x" for r in variant["vs_off_rounds"])
        lines.append(f"| {name} | {w['pairs_per_s']} | {ratios} | {w['hit_share']:.2f} | {w['pairs_to_model']} | "
                     f"{w['p50_ms']} | {w['p99_ms']} | {a['client_p50_ms']} / {a['gateway_p50_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="alias or name of a model of the repository (bge, minilm, ...)")
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("RERANKER_MODELS_DIR", "models")))
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--distinct", type=int, default=10_000, help="distinct pairs in the workload")
    parser.add_argument("--repeat-share", type=float, default=0.5, help="share of the pairs sent that are repeats")
    parser.add_argument("--zipf", type=float, default=1.0, help="exponent of the queries' popularity")
    parser.add_argument("--doc-words", type=int, nargs=2, default=(32, 96), metavar=("MIN", "MAX"),
                        help="words (about tokens) per document")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-hit-requests", type=int, default=200)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="which to run; ratios need off among them")
    parser.add_argument("--rounds", type=int, default=1, help="times each variant runs, alternating")
    parser.add_argument("--redis-server", default="redis-server",
                        help="redis-server binary (or a wrapper script) for the redis variant")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)

    model = resolve(args.model, args.model_repository).name
    requests = zipf_workload(args.distinct, args.repeat_share, args.zipf, args.seed, tuple(args.doc_words))
    pairs = sum(len(r.documents) for r in requests)
    distinct = distinct_pairs(requests)
    print(f"workload: {len(requests)} requests, {pairs} pairs, {distinct} distinct "
          f"({1 - distinct / pairs:.1%} repeats), concurrency {args.concurrency}", flush=True)
    texts = random.Random(args.seed + 2)
    probe = Request(_text(texts, (12, 14), "probe?"),
                    tuple(_text(texts, tuple(args.doc_words), f"probe {i}") for i in range(100)))
    log_dir = (args.out.parent if args.out else Path(".")) / "cache-bench-logs"
    result = {"model": model, "models_dir": str(args.models_dir), "concurrency": args.concurrency,
              "requests": len(requests), "pairs": pairs, "distinct_pairs": distinct,
              "repeat_share": round(1 - distinct / pairs, 3), "zipf": args.zipf, "doc_words": list(args.doc_words),
              "seed": args.seed, "rounds": []}
    stack = Processes(args.model_repository, args.models_dir, log_dir)
    redis = None
    try:
        for round_number in range(args.rounds):
            runs = {}
            for name in args.variants:
                env = dict(VARIANTS[name])
                if name == "redis":
                    binary = shutil.which(args.redis_server) or (
                        args.redis_server if os.access(args.redis_server, os.X_OK) else None)
                    if binary is None:
                        runs[name] = {"skipped": f"no {args.redis_server} found"}
                        print(f"{name}: skipped, no {args.redis_server}", flush=True)
                        continue
                    try:
                        server = start_redis(log_dir, binary=binary)
                        redis, env["RERANKER_CACHE_URL"] = server.process, f"redis://127.0.0.1:{server.ports['redis']}"
                    except (OSError, RuntimeError) as exc:  # a carried binary that cannot run here
                        runs[name] = {"skipped": f"{binary} did not start: {exc}"[:300]}
                        print(f"{name}: skipped, {runs[name]['skipped']}", flush=True)
                        continue
                gateway, url = stack.gateway(name, model, env)
                try:
                    workload = asyncio.run(run_workload(url, requests, args.concurrency))
                    count = args.all_hit_requests if name != "off" else max(args.all_hit_requests // 10, 5)
                    hit = asyncio.run(all_hit_latency(url, probe, count))
                finally:
                    stop(gateway, signal.SIGINT)
                    if redis is not None:
                        stop(redis)
                        redis = None
                runs[name] = {"env": {k: v for k, v in env.items() if "SECRET" not in k}, "workload": workload,
                              "all_hit": hit}
                print(f"round {round_number + 1} {name}: {workload['pairs_per_s']} pairs/s, hit share "
                      f"{workload['hit_share']}, p50 {workload['p50_ms']} ms; all-hit 100 docs p50 "
                      f"{hit['client_p50_ms']} ms (gateway {hit['gateway_p50_ms']} ms)", flush=True)
            result["rounds"].append(runs)
    finally:
        stack.close()
    result["variants"] = summarize(result["rounds"])
    print(table(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    failures = sum(run.get("workload", {}).get("failures", 0) for runs in result["rounds"] for run in runs.values())
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
