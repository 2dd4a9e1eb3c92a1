"""Closed-loop load at a fixed concurrency, and the statistics of one level.

C clients each send a request, wait for its answer, and send the next, until
the level's request cap or its duration is reached (requests already sent
are always waited for). Two drivers share the statistics: threads around a
blocking `send(i)` (the in-process ways) and asyncio tasks around an async
`send(i)` (HTTP). `send(i)` gets the request's sequence number and returns
the (pairs, tokens) it scored; an exception counts as a failure.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

MAX_ERRORS_KEPT = 5


@dataclass
class Sample:
    start: float
    end: float
    pairs: int = 0
    tokens: int = 0
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summarize(samples: list[Sample], started: float, concurrency: int, bin_s: float = 1.0) -> dict:
    """Throughput, latency percentiles and a per-`bin_s` timeline of one level."""
    ok = [s for s in samples if s.error is None]
    finished = max((s.end for s in samples), default=started)
    elapsed = max(finished - started, 1e-9)
    latencies = [s.end - s.start for s in ok]
    pairs, tokens = sum(s.pairs for s in ok), sum(s.tokens for s in ok)
    errors = list(dict.fromkeys(s.error for s in samples if s.error))[:MAX_ERRORS_KEPT]
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "failures": len(samples) - len(ok),
        "errors": errors,
        "elapsed_s": round(elapsed, 3),
        "pairs": pairs,
        "tokens": tokens,
        "requests_per_s": round(len(ok) / elapsed, 3),
        "pairs_per_s": round(pairs / elapsed, 1),
        "tokens_per_s": round(tokens / elapsed, 1),
        "mean_ms": _ms(sum(latencies) / len(latencies)) if latencies else None,
        "p50_ms": _ms(percentile(latencies, 50)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(max(latencies, default=None)),
        "timeline": timeline(samples, started, bin_s),
    }


def timeline(samples: list[Sample], started: float, bin_s: float) -> list[dict]:
    """Per bin of completion time: answers, pairs/s and latency percentiles."""
    elapsed = max(max((s.end for s in samples), default=started) - started, 1e-9)
    # Equal bins of about bin_s that end with the level: a short last bin would show a burst that is not there.
    count = max(1, round(elapsed / bin_s))
    width = elapsed / count
    bins: dict[int, list[Sample]] = {}
    for sample in samples:
        bins.setdefault(min(int((sample.end - started) / width), count - 1), []).append(sample)
    rows = []
    for index in sorted(bins):
        done = [s for s in bins[index] if s.error is None]
        latencies = [s.end - s.start for s in done]
        rows.append({
            "t_s": round((index + 1) * width, 3),
            "requests": len(bins[index]),
            "failures": len(bins[index]) - len(done),
            "pairs_per_s": round(sum(s.pairs for s in done) / width, 1),
            "p50_ms": _ms(percentile(latencies, 50)),
            "p99_ms": _ms(percentile(latencies, 99)),
        })
    return rows


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class _Schedule:
    """Hands out request numbers until the cap or the deadline."""

    def __init__(self, duration_s: float, max_requests: int | None, concurrency: int) -> None:
        self.deadline = time.perf_counter() + duration_s
        self.max_requests = max_requests
        self.concurrency = concurrency
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> int | None:
        with self._lock:
            number = next(self._numbers)
        if self.max_requests is not None and number >= self.max_requests:
            return None
        # Each client's first request goes out whatever the duration, so a level always
        # reaches its concurrency once, even for a model slower than the duration.
        if self.max_requests is None and number >= self.concurrency and time.perf_counter() >= self.deadline:
            return None
        return number


def run_threads(send: Callable[[int], tuple[int, int]], concurrency: int, duration_s: float,
                max_requests: int | None = None, bin_s: float = 1.0) -> dict:
    samples: list[Sample] = []
    schedule = _Schedule(duration_s, max_requests, concurrency)
    started = time.perf_counter()

    def client() -> None:
        while (number := schedule.next()) is not None:
            begin = time.perf_counter()
            try:
                pairs, tokens = send(number)
                samples.append(Sample(begin, time.perf_counter(), pairs, tokens))
            except Exception as exc:  # a failed request is data, not the end of the level
                samples.append(Sample(begin, time.perf_counter(), error=_error(exc)))

    threads = [threading.Thread(target=client, name=f"client-{i}", daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarize(samples, started, concurrency, bin_s)


async def run_async(send: Callable[[int], Awaitable[tuple[int, int]]], concurrency: int, duration_s: float,
                    max_requests: int | None = None, bin_s: float = 1.0) -> dict:
    samples: list[Sample] = []
    schedule = _Schedule(duration_s, max_requests, concurrency)
    started = time.perf_counter()

    async def client() -> None:
        while (number := schedule.next()) is not None:
            begin = time.perf_counter()
            try:
                pairs, tokens = await send(number)
                samples.append(Sample(begin, time.perf_counter(), pairs, tokens))
            except Exception as exc:
                samples.append(Sample(begin, time.perf_counter(), error=_error(exc)))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return summarize(samples, started, concurrency, bin_s)
