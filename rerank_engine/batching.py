"""Length-sorted micro-batching under a token budget.

A Triton batch can mix a 20-token pair with a 500-token one; padding both to
500 wastes most of the compute. Sorting by length and cutting the sorted list
into micro-batches whose padded size stays under a token budget keeps padding
small and memory bounded whatever the request mix.
"""

from __future__ import annotations

from typing import Sequence


def plan_micro_batches(lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Group item indices, longest first, so that `len(group) * longest <= max_batch_tokens`.

    Every item lands in exactly one group; an item longer than the budget gets a
    group of its own rather than being refused (the caller already bounded its length).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        # The first item of a group is its longest, so it fixes the padded width.
        width = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * width > max_batch_tokens or len(current) >= max_batch_size):
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    return groups
