"""Concurrency for the in-process ways, (a) the seed-style baseline and (b) the
engine direct: a batcher in front of one scorer.

Both ways get the same machinery; only the batching policy differs:

- (b) the engine mirrors what gateway + Triton do with one model instance: a
  request of N documents is cut into chunks of at most the model's
  `max_batch_size` pairs (the gateway's fan-out), and one worker merges queued
  chunks, whole, into batches of at most `max_batch_size` pairs, waiting up to
  the model's `max_queue_delay_microseconds` for a batch to fill (Triton's
  dynamic batcher). So (c)/(b) measures what the HTTP hop, the gateway and
  Triton's transport cost, not a different batching policy.
- (a) the seed queued single pairs and a worker took at most 8 of them per
  forward pass, in arrival order, within a short time window.

C concurrent clients are C threads (bench.loadgen.run_threads), each
submitting one request and waiting for all of its chunks.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Sequence

PairText = tuple[str, str]
ScoreFn = Callable[[list[PairText]], Sequence[int]]
"""Scores pairs in one call; returns the number of tokens of each pair."""


class Batcher:
    """One worker thread that merges queued chunks into batches of at most `max_pairs` pairs."""

    def __init__(self, score: ScoreFn, max_pairs: int, max_delay_s: float) -> None:
        self.score = score
        self.max_pairs = max_pairs
        self.max_delay_s = max_delay_s
        self.batch_sizes: list[int] = []  # pairs per scoring call, for tests and sanity checks
        self.busy_s = 0.0  # summed time inside `score`: the share of a level the model was computing
        self._queue: queue.Queue = queue.Queue()
        self._carry: tuple[list[PairText], Future] | None = None
        self._worker = threading.Thread(target=self._run, name="batcher", daemon=True)
        self._worker.start()

    def submit(self, pairs: list[PairText]) -> Future:
        if not 0 < len(pairs) <= self.max_pairs:
            raise ValueError(f"a chunk has 1 to {self.max_pairs} pairs, not {len(pairs)}")
        future: Future = Future()
        self._queue.put((pairs, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _run(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, size = [first], len(first[0])
            deadline = time.perf_counter() + self.max_delay_s
            while size < self.max_pairs:
                try:
                    item = self._next(deadline - time.perf_counter())
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                if size + len(item[0]) > self.max_pairs:
                    self._carry = item  # a chunk is never split across batches, as in Triton
                    break
                batch.append(item)
                size += len(item[0])
            self._score(batch, size)

    def _score(self, batch: list[tuple[list[PairText], Future]], size: int) -> None:
        pairs = [pair for chunk, _ in batch for pair in chunk]
        self.batch_sizes.append(size)
        started = time.perf_counter()
        try:
            tokens = list(self.score(pairs))
        except Exception as exc:  # e.g. out of memory: fail these requests, keep serving
            for _, future in batch:
                future.set_exception(exc)
            return
        finally:
            self.busy_s += time.perf_counter() - started
        start = 0
        for chunk, future in batch:
            future.set_result(sum(tokens[start:start + len(chunk)]))
            start += len(chunk)


def engine_share(batcher: Batcher, before: tuple[int, float], elapsed_s: float) -> dict | None:
    """Per batch since `before` (= (len(batch_sizes), busy_s) then): the figures of way (c)'s Triton
    counters that an in-process way has, so the two read side by side."""
    done, busy_before = before
    sizes = batcher.batch_sizes[done:]
    if not sizes:
        return None
    busy = batcher.busy_s - busy_before
    return {"batches": len(sizes), "mean_batch_pairs": round(sum(sizes) / len(sizes), 2),
            "wall_ms_per_batch": round(1000 * elapsed_s / len(sizes), 2),
            "engine_ms_per_batch": round(1000 * busy / len(sizes), 2), "engine_busy": round(busy / elapsed_s, 3)}


def chunks(pairs: list[PairText], size: int) -> list[list[PairText]]:
    return [pairs[i:i + size] for i in range(0, len(pairs), size)]


def request_sender(batcher: Batcher, requests: list[list[PairText]],
                   chunk_pairs: int) -> Callable[[int], tuple[int, int]]:
    """`send(i)` for bench.loadgen: request i (round robin over `requests`), all its chunks at once."""

    def send(number: int) -> tuple[int, int]:
        pairs = requests[number % len(requests)]
        futures = [batcher.submit(chunk) for chunk in chunks(pairs, chunk_pairs)]
        return len(pairs), sum(f.result() for f in futures)

    return send
