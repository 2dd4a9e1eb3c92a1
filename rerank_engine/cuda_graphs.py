"""CUDA graphs for a scorer's forward pass: each micro-batch shape, rounded up
to a bucket, is captured once and then replayed. `GraphedForward` does it for
padded micro-batches (rows x width buckets), `PackedGraphs` for packed ones
(token-count buckets).

Where the host is the limit, a graph removes it. On an H200 (transformers 5.17,
bench.profile_engine) one bge-reranker-base pair runs ~0.6 ms of kernels but
takes ~7 ms, because the host spends that long launching some 300 of them one by
one; a 100-pair request keeps the GPU busy less than half its time. A replayed
graph launches them all at once.

Shapes are bucketed - rows up to the next of `ROW_BUCKETS`, width up to a
multiple of `WIDTH_STEP` - so a handful of graphs serve every request. The
extra rows and columns are padding that the attention mask hides, so scores
equal the eager forward's within kernel rounding. Buckets of up to
`PACKED_HANDOFF_ROWS` rows are captured at load, larger ones on first use; all
share one memory pool. Shapes past `max_tokens` padded tokens, or past the last
row bucket, run eagerly.

Captures run under `torch.inference_mode()`. Outside it, a forward pass
records autograd history (the checkpoint's parameters require gradients), and a
captured graph's output then keeps every activation of its pass alive: on an
H200 the 96 graphs bge captures at load held 52 GB per instance that way.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)

ROW_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
WIDTH_STEP = 32
PACKED_HANDOFF_ROWS = 16
"""With packed batches on as well, calls of at most this many pairs still replay
graphs: one graph launch replaces a packed pass's ~120 eager launches, and a
few rows waste little padding."""

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def bucket(rows: int, width: int) -> tuple[int, int] | None:
    """The captured shape that holds a (rows, width) micro-batch, or None when rows exceed every bucket."""
    index = bisect.bisect_left(ROW_BUCKETS, rows)
    if index == len(ROW_BUCKETS):
        return None
    return ROW_BUCKETS[index], -(-width // WIDTH_STEP) * WIDTH_STEP


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    output: torch.Tensor


class GraphedForward:
    """A drop-in for `Scorer.forward` on a CUDA device."""

    def __init__(self, forward: Forward, pad_id: int, device: torch.device, max_tokens: int) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.forward = forward
        self.pad_id = pad_id
        self.device = device
        self.max_tokens = max_tokens
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        # One side stream for every capture's warm-up pass: the caching allocator keeps the blocks a
        # stream freed for that stream alone (and cuBLAS a workspace per stream).
        self.side = torch.cuda.Stream(device)
        self._lock = threading.Lock()  # replays write shared static buffers
        self.disabled = False  # set when a capture fails: the model then runs eagerly

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        rows, width = input_ids.shape
        shape = bucket(rows, width)
        if self.disabled or shape is None or shape[0] * shape[1] > self.max_tokens:
            return self.forward(input_ids, attention_mask, lengths)
        with self._lock:
            entry = self.graphs.get(shape)
            if entry is None:
                try:
                    entry = self._capture(*shape)
                except RuntimeError:
                    # A model whose forward syncs with the host cannot be captured; serve it eagerly.
                    log.exception("CUDA graph capture failed; running the model without graphs")
                    self.disabled = True
                    return self.forward(input_ids, attention_mask, lengths)
            entry.input_ids.fill_(self.pad_id)
            entry.input_ids[:rows, :width].copy_(input_ids)
            entry.attention_mask.zero_()
            entry.attention_mask[:rows, :width].copy_(attention_mask)
            # A padding row attends to one position, so its softmax stays finite (its output is dropped).
            entry.attention_mask[rows:, 0] = 1
            entry.lengths.fill_(1)
            entry.lengths[:rows].copy_(lengths)
            entry.graph.replay()
            return entry.output[:rows].clone()

    @torch.inference_mode()
    def prepare(self, max_rows: int, max_width: int) -> None:
        """Capture every bucket of at most `max_rows` rows and `max_width` tokens now, at load.

        A capture costs tens of milliseconds; taken on first use, it lands on a
        live request (single pairs of new lengths showed p90 ~28 ms against a
        p50 of ~9.5 ms end to end on an H200), and with several Triton instances
        each pays for its own.
        """
        widths = range(WIDTH_STEP, -(-max_width // WIDTH_STEP) * WIDTH_STEP + 1, WIDTH_STEP)
        started = time.perf_counter()
        with self._lock:
            # Largest first: smaller captures then fit in the blocks the larger ones freed in the shared pool.
            for rows in sorted((r for r in ROW_BUCKETS if r <= max_rows), reverse=True):
                for width in reversed(widths):
                    if self.disabled or (rows, width) in self.graphs or rows * width > self.max_tokens:
                        continue
                    try:
                        self._capture(rows, width)
                    except RuntimeError:
                        log.exception("CUDA graph capture failed; running the model without graphs")
                        self.disabled = True
            # The warm-up passes' blocks stay cached after use: give them back to the device (the graphs
            # keep theirs in their pool), so the memory held after the load is what serving needs.
            torch.cuda.empty_cache()
        log.info("%d CUDA graphs ready (up to %d rows x %d tokens) after %.1f s",
                 len(self.graphs), max_rows, widths[-1], time.perf_counter() - started)

    @torch.inference_mode()
    def _capture(self, rows: int, width: int) -> _Graph:
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=self.device)
        attention_mask = torch.zeros_like(input_ids)
        attention_mask[:, 0] = 1
        lengths = torch.ones(rows, dtype=torch.long, device=self.device)
        # Lazy set-up (cuBLAS handles and workspaces, kernel selection) must happen before capture,
        # and on a side stream, as torch.cuda.graph requires.
        side = self.side
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.forward(input_ids, attention_mask, lengths)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.forward(input_ids, attention_mask, lengths)
        entry = self.graphs[(rows, width)] = _Graph(graph, input_ids, attention_mask, lengths, output)
        log.debug("captured a CUDA graph for %d rows x %d tokens (%d graphs)", rows, width, len(self.graphs))
        return entry


# ---------------------------------------------------------------------------------------------
# Packed (padding-free) batches, replayed per token-count bucket
# ---------------------------------------------------------------------------------------------

PACKED_TOKEN_STEPS = ((16384, 1024), (65536, 2048))
"""Packed token buckets: multiples of 1,024 tokens up to 16,384, then of 2,048 (and 512 below 1,024).
A micro-batch runs in the smallest bucket that holds it, the rest of the bucket being tokens no span
covers: they cost the products' work (under a step: at most 11% of an issue-6 micro-batch of ~18k
tokens, ~5.5% on average) but no attention."""


def packed_buckets(max_tokens: int) -> list[int]:
    """Every token bucket up to the one that holds `max_tokens`."""
    buckets, size = [512], 512
    while size < max_tokens:
        step = next(step for limit, step in PACKED_TOKEN_STEPS if size < limit) if size >= 1024 else 512
        size += step
        buckets.append(size)
    return buckets


@dataclass
class _PackedGraph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor  # [bucket] int64
    positions: torch.Tensor  # [bucket] int64
    meta: torch.Tensor  # [2 * rows + 1] int64: the span offsets (rows + 1), then each row's first token (rows)
    output: torch.Tensor  # [rows] one float per row slot


class PackedGraphs:
    """A drop-in for a packed forward (`PackedXLMRoberta`) on a CUDA device: each micro-batch replays the
    graph of its token bucket. What varies inside a bucket is data, not shape:
    - ids and positions fill the bucket's first tokens; the tokens after them keep whatever an earlier
      batch left (valid ids, so every gather stays in range) and belong to no span;
    - the span offsets have `max_rows` + 1 slots; the slots past the batch's rows repeat its token count,
      so those spans are empty: FlashAttention's varlen kernel skips them, and the uncovered tokens'
      attention output is never read (every other op works row by row, and only rows' first tokens
      are scored);
    - FlashAttention's `max_q`/`max_k` are the model's `max_length`: they size its grid, not its result.
    Batches the graphs cannot hold (more rows than `max_rows`, more tokens than the largest bucket, shared
    heads or gathered keys, a span past `max_length`) run eagerly.

    Buckets up to the token budget are captured at load, largest first, into one memory pool: graphs
    replay one at a time (a lock), so each capture reuses the blocks the larger ones freed.
    """

    def __init__(self, forward, device: torch.device, pad_id: int, position_start: int, max_length: int,
                 max_rows: int) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.forward = forward
        self.device = device
        self.pad_id = pad_id
        self.position_start = position_start
        self.max_length = max_length
        self.max_rows = max_rows
        self.buckets: list[int] = []
        self.graphs: dict[int, _PackedGraph] = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream(device)
        self._lock = threading.Lock()
        self.disabled = False
        self.replays = 0
        self.eager = 0  # batches that ran without a graph (for the benchmarks)

    def _bucket(self, tokens: int) -> int | None:
        index = bisect.bisect_left(self.buckets, tokens)
        return self.buckets[index] if index < len(self.buckets) else None

    def __call__(self, batch):
        rows = batch.first.shape[0]
        size = None if self.disabled or batch.kv_index is not None else self._bucket(batch.tokens)
        if (size is None or rows > self.max_rows or len(batch.spans_q) != rows or batch.max_q > self.max_length
                or size not in self.graphs):
            self.eager += 1
            return self.forward(batch)
        offsets = [start for start, _ in batch.spans_q] + [batch.tokens]
        meta = offsets + [batch.tokens] * (self.max_rows - rows) + offsets[:rows] + [0] * (self.max_rows - rows)
        # A fresh pinned tensor per call: the caching host allocator keeps it until its copy has run.
        host = torch.tensor(meta, dtype=torch.int64).pin_memory()
        with self._lock:
            entry = self.graphs[size]
            entry.ids[: batch.tokens].copy_(batch.ids)
            entry.positions[: batch.tokens].copy_(batch.positions)
            entry.meta.copy_(host, non_blocking=True)
            entry.graph.replay()
            self.replays += 1
            return entry.output[:rows].clone()

    @torch.inference_mode()
    def prepare(self, max_tokens: int) -> None:
        """Capture every bucket up to `max_tokens` tokens now (a capture on a live request costs it tens of ms)."""
        self.buckets = packed_buckets(max_tokens)
        started = time.perf_counter()
        with self._lock:
            for size in reversed(self.buckets):
                if self.disabled:
                    break
                try:
                    self.graphs[size] = self._capture(size)
                except RuntimeError:
                    log.exception("packed CUDA graph capture failed; packed batches run without graphs")
                    self.disabled = True
            torch.cuda.empty_cache()
        log.info("%d packed CUDA graphs ready (token buckets %d..%d, %d row slots) after %.1f s",
                 len(self.graphs), self.buckets[0], self.buckets[-1], self.max_rows, time.perf_counter() - started)

    def _capture(self, size: int) -> _PackedGraph:
        from rerank_engine.packing import Packed

        ids = torch.full((size,), self.pad_id, dtype=torch.long, device=self.device)
        positions = torch.full((size,), self.position_start, dtype=torch.long, device=self.device)
        # The warm-up pass runs on real spans (max_length tokens each) so every kernel meets valid offsets.
        starts = list(range(0, size, self.max_length))[: self.max_rows]
        offsets = starts + [size] * (self.max_rows + 1 - len(starts))
        meta = torch.tensor(offsets + starts + [0] * (self.max_rows - len(starts)), dtype=torch.long,
                            device=self.device)
        rows = self.max_rows

        def run():
            cu = meta[: rows + 1].to(torch.int32)
            batch = Packed(ids=ids, positions=positions, cu_q=cu, cu_k=cu, max_q=self.max_length,
                           max_k=self.max_length, kv_index=None, first=meta[rows + 1 :], last=meta[rows + 1 :],
                           spans_q=[], spans_k=[])
            return self.forward(batch)

        side = self.side
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = run()
        return _PackedGraph(graph, ids, positions, meta, output)
