"""Request priority in the gateway: the budget that keeps bulk work from
filling Triton's batches, the dispatch window that lets the most urgent in
first, and vLLM's `priority` as Triton levels for a config that has them.

No shipped config has Triton priority levels or a queue policy. With either,
Triton 2.51's dynamic batcher builds no batch ahead ("prefetching"): it hands
a batch over only when an instance is already waiting, and checks that when
a request arrives or a batch ends. A batch that ends is reported before its
instance is back to waiting, so when no request arrives after it the batcher
sleeps up to 0.5 s with requests queued and the instance idle (core
`dynamic_batch_scheduler.cc`, `default_wait_microseconds`). On 2 CPU cores
that was 10-27% of sequential single pairs (README, Request priority).

So priority is decided here. Triton serves its queue in arrival order and
cannot preempt the batch in flight, and it fills an urgent request's batch
with whatever else is queued. Left alone, saturating bulk clients make every
batch a full `max_batch_size` one, and an interactive request pays for the
batch in flight plus a full batch of its own. So the gateway lets at most
RERANKER_BULK_ROWS_IN_FLIGHT rows of bulk requests (priority > 0) be at
Triton per model, in chunks of half that (one computing while the next waits
in Triton's queue, so the model never idles between them), and holds the
rest in arrival order: an interactive request then finds at most one bulk
chunk in flight ahead of it and one in its batch. Normal (0) and interactive
(< 0) requests are never held by it.

The dispatch window (RERANKER_DISPATCH_WINDOW_ROWS, off by default) holds
every priority the same way, most urgent first (lowest `priority`): a bound
on what one model has at Triton, so that an urgent request waits behind at
most that many rows. Both bounds are per gateway worker process.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from contextlib import asynccontextmanager
from typing import AsyncIterator

from rerank_engine.model_config import ModelConfig


def triton_priority_level(model: ModelConfig, priority: int) -> int:
    """vLLM's `priority` (lower is served first, 0 normal) as one of the model's dynamic-batcher levels
    (Triton: 1 is the most urgent; 0 asks for the default level): the default level moved by `priority`
    steps, held within 1..priority_levels. A model without levels takes every request at its one level."""
    if model.priority_levels <= 0 or priority == 0:
        return 0
    default = model.default_priority_level or 1
    return min(max(default + priority, 1), model.priority_levels)


def is_bulk(priority: int) -> bool:
    return priority > 0


class RowBudget:
    """At most `limit` rows outstanding; requests beyond it wait, the most urgent first (lower `urgency`:
    a Triton priority level), then first come first served. The head waiter is never overtaken by smaller
    ones behind it, so a large request is not starved."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: list[tuple[int, int, int, asyncio.Future]] = []  # heap of (urgency, arrival, rows, future)
        self._arrivals = itertools.count()

    @property
    def waiting_rows(self) -> int:
        return sum(rows for _, _, rows, future in self._waiting if not future.done())

    @asynccontextmanager
    async def take(self, rows: int, urgency: int = 0) -> AsyncIterator[None]:
        rows = min(rows, self.limit)
        if self._waiting or self.used + rows > self.limit:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (urgency, next(self._arrivals), rows, future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # granted as it was cancelled: give it back
                    self._release(rows)
                raise
        else:
            self.used += rows
        try:
            yield
        finally:
            self._release(rows)

    def _release(self, rows: int) -> None:
        self.used -= rows
        while self._waiting:
            _, _, wanted, future = self._waiting[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiting)
                continue
            if self.used + wanted > self.limit:
                break
            heapq.heappop(self._waiting)
            self.used += wanted
            future.set_result(None)
