"""The scorer skeleton every model kind shares: pre (tokenize and truncate),
core (length-sorted micro-batches through the network), post (activation).

Subclasses say how pairs become token sequences, what one forward pass returns
per sequence, and how those outputs become scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

from rerank_engine.batching import plan_micro_batches
from rerank_engine.packing import Row, pack_chunk, plan_packed
from rerank_engine.telemetry import RunStats


class Pair(NamedTuple):
    query: str
    document: str
    instruction: str | None = None
    max_document_tokens: int | None = None  # a caller's own cap on the document, before the model's limit


@dataclass
class Encoded:
    """Token sequences to run, and per-pair accounting of what was sent."""

    sequences: list[list[int]]
    num_tokens: np.ndarray  # int32, per pair, after truncation
    input_tokens: np.ndarray  # int32, per pair, before truncation
    truncated: np.ndarray  # bool, per pair
    rows: np.ndarray | None = None  # per pair, the sequences it scores from (None: sequence i is pair i)


@dataclass
class Scores:
    score: np.ndarray  # float32, per pair
    raw_score: np.ndarray  # float32, per pair
    num_tokens: np.ndarray  # int32, per pair
    input_tokens: np.ndarray  # int32, per pair
    truncated: np.ndarray  # bool, per pair


class Scorer(ABC):
    """Scores (query, document) pairs with one model on one device."""

    def __init__(
        self,
        *,
        device: torch.device,
        max_length: int,
        max_batch_tokens: int,
        max_batch_size: int,
        pad_id: int,
    ) -> None:
        self.device = device
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.pad_id = pad_id

    def score(self, pairs: Sequence[Pair]) -> Scores:
        if not pairs:
            empty, none = np.zeros(0, np.float32), np.zeros(0, np.int32)
            return Scores(empty, empty, none, none, np.zeros(0, bool))
        encoded = self.encode(pairs)
        self.last_run = RunStats(0, 0, 0)
        outputs = self.infer(encoded)
        score, raw = self.finalize(encoded, outputs)
        return Scores(
            score=score.astype(np.float32, copy=False),
            raw_score=raw.astype(np.float32, copy=False),
            num_tokens=encoded.num_tokens,
            input_tokens=encoded.input_tokens,
            truncated=encoded.truncated,
        )

    @abstractmethod
    def encode(self, pairs: Sequence[Pair]) -> Encoded:
        """Tokenize and truncate; every sequence must fit `max_length`."""

    @staticmethod
    def capped(document: list[int], pair: Pair) -> list[int]:
        """The document ids under the pair's own cap, if it has one."""
        return document if pair.max_document_tokens is None else document[: pair.max_document_tokens]

    @staticmethod
    def counts(sequences: list[list[int]], uncut: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        num_tokens = np.fromiter(map(len, sequences), np.int32, len(sequences))
        input_tokens = np.array(uncut, np.int32)
        return num_tokens, input_tokens, input_tokens > num_tokens

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One padded micro-batch in, one float32 row per sequence out."""

    @abstractmethod
    def finalize(self, encoded: Encoded, outputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-sequence outputs (in `encode` order) to (score, raw_score) per pair."""

    packed = None
    """The padding-free forward (`rerank_engine.packed`), set by `use_packed`; when set it replaces
    padded micro-batches: one `Packed` batch in, one float row per scored row out."""
    position_start = 0
    """The model's first position id, for packed batches."""
    graph_rows = 0
    """With packing on, calls of at most this many sequences still run padded (`cuda_graphs.install` sets it)."""

    def use_packed(self) -> None:
        """Run packed (padding-free) batches from now on; ValueError if this model cannot."""
        raise ValueError(f"{type(self).__name__} has no packed forward")

    last_run: RunStats | None = None
    """Micro-batches and tokens (with and without padding) of the latest `score` call, for telemetry."""

    def account(self, tokens: int, padded_tokens: int) -> None:
        """Count one padded forward pass in `last_run`."""
        run = self.last_run or RunStats(0, 0, 0)
        self.last_run = RunStats(run.micro_batches + 1, run.tokens + tokens, run.padded_tokens + padded_tokens)

    def infer(self, encoded: Encoded) -> torch.Tensor:
        """Per-sequence outputs, in `encode` order. A scorer that knows which
        sequences share work (Qwen3's per-query prompt head) overrides this."""
        return self.run(encoded.sequences)

    @torch.inference_mode()
    def run(self, sequences: list[list[int]]) -> torch.Tensor:
        if self.packed is not None and len(sequences) > self.graph_rows:
            return self.run_packed([], [(None, s) for s in sequences])
        lengths = [len(s) for s in sequences]
        order: list[int] = []
        outputs: list[torch.Tensor] = []
        for group in plan_micro_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            input_ids, attention_mask, group_lengths = self._pad([sequences[i] for i in group])
            self.account(sum(lengths[i] for i in group), input_ids.numel())
            outputs.append(self.forward(input_ids, attention_mask, group_lengths).float())
            order.extend(group)
        return self.gather(outputs, order)

    @torch.inference_mode()
    def run_packed(self, heads: Sequence[Sequence[int]], rows: Sequence[Row]) -> torch.Tensor:
        """Per-row outputs, in `rows` order, from packed chunks under the token budget."""
        order: list[int] = []
        outputs: list[torch.Tensor] = []
        for chunk in plan_packed(heads, rows, self.max_batch_tokens):
            batch = pack_chunk(heads, rows, chunk, self.device, self.position_start)
            self.account(batch.tokens, batch.tokens)
            outputs.append(self.packed(batch).float())
            order.extend(chunk)
        return self.gather(outputs, order)

    @staticmethod
    def gather(outputs: list[torch.Tensor], order: list[int]) -> torch.Tensor:
        """Micro-batch outputs, rows in `order`, back to sequence order on the host.

        One copy to the host at the end, not one per micro-batch: a copy waits
        for the GPU, and the host would otherwise sit idle instead of padding
        and launching the next micro-batch while the GPU runs this one.
        """
        rows = torch.cat([out.cpu() for out in outputs])  # everything is launched: the first copy waits for all
        return rows[torch.argsort(torch.tensor(order))]

    def _pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Right padding: position ids stay 0..n-1 for every model, and a causal
        # model's last real token never sees the padding after it.
        width = max(len(s) for s in batch)
        ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        lengths = torch.from_numpy(mask.sum(axis=1))
        return self._to_device(torch.from_numpy(ids)), self._to_device(torch.from_numpy(mask)), self._to_device(lengths)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor
