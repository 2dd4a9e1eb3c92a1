"""Padding-free layout of a micro-batch: every token of every sequence in one
flat run, described by cumulative sequence offsets, as variable-length
attention kernels take it.

A padded micro-batch computes `rows x longest` tokens; a packed one computes
the tokens that exist. On issue 6's workload (documents of 64-256 tokens) a
padded 100-pair batch is about a third padding.

A packed run holds two kinds of spans:
- **heads**: shared leading spans (Qwen3-Reranker's system prompt,
  instruction and query), run once, attended to by their tails, never scored;
- **rows**: the sequences that are scored, each optionally continuing a head.
  A row's keys are its head's keys followed by its own; its positions continue
  after the head, so it computes exactly what the whole sequence would.

This module is host-side bookkeeping (numpy); `rerank_engine.packed` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np
import torch

Row = tuple[int | None, Sequence[int]]
"""A scored sequence: the index of the head it continues (None: none), and its own ids."""


@dataclass
class Packed:
    """One packed micro-batch; a field per tensor the forward pass needs."""

    ids: torch.Tensor  # [tokens] int64: heads first, then rows
    positions: torch.Tensor  # [tokens] int64
    cu_q: torch.Tensor  # [spans + 1] int32: query offsets of each span (heads, then rows)
    cu_k: torch.Tensor  # [spans + 1] int32: key offsets, after `kv_index` gathers them
    max_q: int
    max_k: int
    kv_index: torch.Tensor | None  # [key tokens] int64: packed token of each key; None when keys are the tokens
    first: torch.Tensor  # [rows] int64: each row's first token
    last: torch.Tensor  # [rows] int64: each row's last token
    spans_q: list[tuple[int, int]]  # host copies of the offsets, for attention without a varlen kernel
    spans_k: list[tuple[int, int]]

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])


def pack(heads: Sequence[Sequence[int]], rows: Sequence[Row], device: torch.device, position_start: int = 0) -> Packed:
    """Lay heads then rows out flat, with the offsets and indices a packed forward needs.

    `position_start` is the model's first position id (RoBERTa-style models count from after the padding index).
    """
    if not all(own for _, own in rows):
        raise ValueError("a packed row needs at least one token of its own")
    # Vectorized: on bge's host-bound path this runs for every request (~100 rows, ~18k tokens).
    lengths = np.array([len(h) for h in heads] + [len(own) for _, own in rows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    first_position = np.array(
        [position_start] * len(heads)
        + [position_start + (len(heads[head]) if head is not None else 0) for head, _ in rows],
        dtype=np.int64,
    )
    total = int(lengths.sum())
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts - first_position, lengths)
    ids = np.fromiter(
        chain(chain.from_iterable(heads), chain.from_iterable(own for _, own in rows)), np.int64, total
    )
    spans_q = list(zip(starts.tolist(), lengths.tolist()))
    head_offsets = starts[: len(heads)].tolist()
    first = starts[len(heads) :]
    last = first + lengths[len(heads) :] - 1

    shared = any(head is not None for head, _ in rows)
    spans_k: list[tuple[int, int]] = list(spans_q)
    kv_index = None
    if shared:
        pieces, spans_k, at = [], [], 0
        for offset, length in spans_q[: len(heads)]:
            pieces.append(np.arange(offset, offset + length))
            spans_k.append((at, length))
            at += length
        for (head, _), (offset, length) in zip(rows, spans_q[len(heads) :]):
            span = [np.arange(offset, offset + length)]
            if head is not None:
                span.insert(0, np.arange(head_offsets[head], head_offsets[head] + len(heads[head])))
            pieces.extend(span)
            width = sum(len(s) for s in span)
            spans_k.append((at, width))
            at += width
        kv_index = np.concatenate(pieces)

    def move(array: np.ndarray, dtype=np.int64) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor

    cu_q = move(np.append(starts, total), np.int32)
    # Without a gather the keys are the tokens: one offsets tensor serves both.
    cu_k = cu_q if kv_index is None else move(np.cumsum([0] + [length for _, length in spans_k]), np.int32)

    return Packed(
        ids=move(ids),
        positions=move(positions),
        cu_q=cu_q,
        cu_k=cu_k,
        max_q=max(length for _, length in spans_q),
        max_k=max(length for _, length in spans_k),
        kv_index=None if kv_index is None else move(kv_index),
        first=move(first),
        last=move(last),
        spans_q=spans_q,
        spans_k=spans_k,
    )


KEYS_PER_TOKEN = 4
"""A chunk's gathered keys (each row's head keys, then its own) are kept under this many times its token
budget. Tokens alone do not bound them: a long query's head is packed once but gathered for every
document, so 1,000 one-token documents under an 8,000-token query would gather 8 million keys."""


def plan_packed(heads: Sequence[Sequence[int]], rows: Sequence[Row], max_tokens: int) -> list[list[int]]:
    """Row indices in chunks whose packed tokens - rows plus the heads they need - stay under `max_tokens`,
    and whose gathered keys stay under `KEYS_PER_TOKEN * max_tokens`.

    Rows keep their order (no padding, so nothing is gained by sorting); a row
    that alone is over a budget gets a chunk of its own.
    """
    max_keys = KEYS_PER_TOKEN * max_tokens
    chunks: list[list[int]] = []
    current: list[int] = []
    used: set[int] = set()
    tokens = keys = 0
    for index, (head, own) in enumerate(rows):
        head_length = len(heads[head]) if head is not None else 0
        cost = len(own) + (head_length if head is not None and head not in used else 0)
        row_keys = len(own) + head_length
        if current and (tokens + cost > max_tokens or keys + row_keys > max_keys):
            chunks.append(current)
            current, used, tokens, keys = [], set(), 0, 0
            cost = len(own) + head_length
        current.append(index)
        tokens += cost
        keys += row_keys
        if head is not None:
            used.add(head)
    if current:
        chunks.append(current)
    return chunks


def pack_chunk(
    heads: Sequence[Sequence[int]], rows: Sequence[Row], chunk: list[int], device: torch.device, position_start: int = 0
) -> Packed:
    """`pack` of the rows in `chunk` and only the heads they continue."""
    needed = list(dict.fromkeys(rows[i][0] for i in chunk if rows[i][0] is not None))
    renumber = {old: new for new, old in enumerate(needed)}
    return pack(
        [heads[h] for h in needed],
        [(None if rows[i][0] is None else renumber[rows[i][0]], rows[i][1]) for i in chunk],
        device,
        position_start,
    )
