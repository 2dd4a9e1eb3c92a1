"""Fewer, larger Triton requests: concurrent small scoring calls for the same
model, options, instruction and priority level go to Triton as one request,
and each caller gets exactly its own rows back.

A single-pair request costs Triton and the gateway one gRPC call, one
request in the dynamic batcher and one decode in the model, whatever its
size; at thousands of single pairs a second those per-request costs, not the
GPU, are the limit (issue 24: ~7,000 one-row requests/s through Triton's gRPC
API, 36,000 pairs/s in 8-row ones). So a call of at most `small_rows` rows
joins a group (model, instruction, options, level). While the group has
fewer than `max_in_flight` requests at Triton and nothing waiting, a call is
sent at once, alone. Otherwise it waits: the waiting calls go out together at
the end of the event loop's turn, or, once `max_in_flight` is reached, when
one of the group's requests comes back, but never later than `window_s`. A merged request holds at most the model's
`max_batch_size` rows.

Each caller keeps its own deadline (it stops waiting at it; the merged
request runs until the latest one's) and its priority level and options
(they are part of the group's key). A caller that gives up (a client that
disconnects) leaves the others' answers alone. When Triton refuses a merged
request as bad input, each caller's rows are sent again on their own, so a
bad request fails alone. Larger calls go straight through.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from gateway.errors import ErrorKind, GatewayError
from gateway.serving.triton import InferenceBackend, PairOptions, ScoreOutputs

REQUEST_ERRORS = (ErrorKind.INVALID_REQUEST, ErrorKind.INPUT_TOO_LONG)
"""Failures that belong to one request's rows: a merged request failing so is split up and sent again."""


@dataclass(eq=False)
class _Call:
    queries: Sequence[str]
    documents: Sequence[str]
    deadline: float
    future: asyncio.Future


@dataclass(eq=False)
class _Group:
    key: tuple
    waiting: list[_Call] = field(default_factory=list)
    in_flight: int = 0
    flush_scheduled: bool = False
    timer: asyncio.TimerHandle | None = None


class Coalescer:
    """`InferenceBackend.score` over `backend`, coalescing small calls; every other method is the backend's."""

    def __init__(self, backend: InferenceBackend, batch_limit: Callable[[str], int], request_timeout_s: float,
                 small_rows: int, max_in_flight: int, window_s: float, observe: Callable[[int], None] | None = None):
        """`batch_limit(model)`: the most rows one Triton request for it may carry (its max_batch_size).
        `observe(callers)`: told how many calls each merged request carried (a metric)."""
        self.backend = backend
        self.batch_limit = batch_limit
        self.request_timeout_s = request_timeout_s
        self.small_rows = small_rows
        self.max_in_flight = max_in_flight
        self.window_s = window_s
        self.observe = observe
        self._groups: dict[tuple, _Group] = {}
        self._tasks: set[asyncio.Task] = set()

    def __getattr__(self, name: str):
        return getattr(self.backend, name)  # is_live, load, model_config...: nothing to coalesce there

    async def score(self, model: str, queries: Sequence[str], documents: Sequence[str],
                    instruction: str | None = None, options: PairOptions = PairOptions(),
                    timeout_s: float | None = None, priority_level: int = 0) -> ScoreOutputs:
        if not 0 < len(documents) <= self.small_rows:
            return await self.backend.score(model, queries, documents, instruction, options, timeout_s,
                                            priority_level)
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        key = (model, instruction, options, priority_level)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(key)
        if not group.waiting and group.in_flight < self.max_in_flight:
            return await self._alone(group, queries, documents, timeout_s)
        call = _Call(queries, documents, time.monotonic() + timeout_s, asyncio.get_running_loop().create_future())
        group.waiting.append(call)
        if not group.flush_scheduled:
            group.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, group, False)
        try:
            return await asyncio.wait_for(call.future, timeout_s)
        except asyncio.TimeoutError:
            raise GatewayError(ErrorKind.BACKEND_TIMEOUT,
                               f"scoring with {model} did not finish within the {timeout_s:g} s limit "
                               "(RERANKER_REQUEST_TIMEOUT_S); the request was dropped") from None

    async def _alone(self, group: _Group, queries, documents, timeout_s: float) -> ScoreOutputs:
        """Nothing to wait for: sent at once from the caller's own task (no extra turn of the loop); calls that
        arrive meanwhile gather behind it."""
        model, instruction, options, level = group.key
        group.in_flight += 1
        try:
            return await self.backend.score(model, queries, documents, instruction, options, timeout_s, level)
        finally:
            self._sent(group)

    def _flush(self, group: _Group, forced: bool) -> None:
        """Send what waits, in merged requests of at most the model's batch limit, while the group may."""
        group.flush_scheduled = False
        if forced:
            group.timer = None
        limit = max(self.batch_limit(group.key[0]), 1)
        while group.waiting and (forced or group.in_flight < self.max_in_flight):
            batch, rows = [], 0
            while group.waiting and (not batch or rows + len(group.waiting[0].documents) <= limit):
                call = group.waiting.pop(0)
                if not call.future.done():  # a caller that gave up before it was sent costs nothing
                    batch.append(call)
                    rows += len(call.documents)
            if batch:
                group.in_flight += 1
                task = asyncio.get_running_loop().create_task(self._send(group, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._settle(group)

    def _settle(self, group: _Group) -> None:
        """The group's timer runs while calls wait; a group with nothing waiting or in flight goes."""
        if group.waiting:
            if group.timer is None:
                group.timer = asyncio.get_running_loop().call_later(self.window_s, self._flush, group, True)
        elif group.timer is not None:
            group.timer.cancel()
            group.timer = None
        if not group.waiting and not group.in_flight and self._groups.get(group.key) is group:
            del self._groups[group.key]

    async def _send(self, group: _Group, batch: list[_Call]) -> None:
        model, instruction, options, level = group.key
        try:
            await self._answer(batch, model, instruction, options, level)
        finally:
            self._sent(group)

    def _sent(self, group: _Group) -> None:
        """One of the group's requests is back: what waits goes out."""
        group.in_flight -= 1
        if group.waiting and not group.flush_scheduled:
            group.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, group, False)
        self._settle(group)

    async def _answer(self, batch: list[_Call], model: str, instruction: str | None, options: PairOptions,
                      level: int) -> None:
        queries = [q for call in batch for q in call.queries]
        documents = [d for call in batch for d in call.documents]
        timeout_s = max(call.deadline for call in batch) - time.monotonic()
        if self.observe is not None:
            self.observe(len(batch))
        try:
            outputs = await self.backend.score(model, queries, documents, instruction, options, timeout_s, level)
        except GatewayError as exc:
            if exc.kind in REQUEST_ERRORS and len(batch) > 1:
                await asyncio.gather(*(self._answer([call], model, instruction, options, level) for call in batch))
                return
            _fail(batch, exc)
            return
        except Exception as exc:  # the callers see what they would have seen without coalescing
            _fail(batch, exc)
            return
        start = 0
        for call in batch:
            end = start + len(call.documents)
            if not call.future.done():
                call.future.set_result(outputs.rows(start, end))
            start = end


def _fail(batch: list[_Call], exc: BaseException) -> None:
    for call in batch:
        if not call.future.done():
            call.future.set_exception(exc)
