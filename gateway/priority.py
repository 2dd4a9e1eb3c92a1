"""Request priority: vLLM's `priority` as Triton's dynamic-batcher levels,
and the budget that keeps bulk work from filling Triton's batches.

Triton serves a model's queue most urgent level first, but it cannot preempt
the batch in flight, and it fills the rest of an urgent request's batch with
whatever else is queued, bulk included. Left alone, saturating bulk clients
make every batch a full `max_batch_size` one, and an interactive request pays
for the batch in flight plus a full batch of its own. So the gateway lets at
most RERANKER_BULK_ROWS_IN_FLIGHT rows of bulk requests (priority > 0) be at
Triton per model, in chunks of half that (one computing while the next waits
in Triton's queue, so the model never idles between them), and holds the
rest in arrival order: an interactive request then finds at most one bulk
chunk in flight ahead of it and one in its batch. Normal (0) and interactive
(< 0) requests are never held.
"""

from __future__ import annotations

import asyncio
from collections import deque
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
    """At most `limit` rows outstanding; requests beyond it wait, first come first served (a large request
    at the head is not overtaken by small ones behind it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting_rows(self) -> int:
        return sum(rows for rows, future in self._waiting if not future.done())

    @asynccontextmanager
    async def take(self, rows: int) -> AsyncIterator[None]:
        rows = min(rows, self.limit)
        if self._waiting or self.used + rows > self.limit:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((rows, future))
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
            wanted, future = self._waiting[0]
            if future.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if self.used + wanted > self.limit:
                break
            self._waiting.popleft()
            self.used += wanted
            future.set_result(None)
