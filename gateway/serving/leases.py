"""Lease bookkeeping: how many requests hold each model, and waiting for a
model's holders to finish before it is unloaded.

A request takes a lease on the model it scores with and returns it when its
response is built, so a switch can unload the old model only once nothing in
flight still needs it.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict


class Leases:
    def __init__(self) -> None:
        self._held: Counter[str] = Counter()
        self._drained: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def acquire(self, model: str) -> None:
        self._held[model] += 1
        self._drained[model].clear()

    def release(self, model: str) -> None:
        self._held[model] -= 1
        if self._held[model] == 0:
            self._drained[model].set()

    def held(self, model: str) -> int:
        return self._held[model]

    async def drained(self, model: str, timeout_s: float) -> bool:
        """Wait until no lease on `model` is held; False if some still are after `timeout_s`."""
        if not self._held[model]:
            return True
        try:
            await asyncio.wait_for(self._drained[model].wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return True
