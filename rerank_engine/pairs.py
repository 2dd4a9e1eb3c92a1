"""What a scoring call takes and gives back: the pairs, their scores, and how
the engine ran them. Plain data, importable without torch (the Triton
model's input decoding and the telemetry read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class Pair(NamedTuple):
    query: str
    document: str
    instruction: str | None = None
    max_document_tokens: int | None = None  # a caller's own cap on the document, before the model's limit
    max_tokens: int | None = None  # a caller's own limit on each sequence, under the model's (vLLM's truncate_prompt_tokens)
    max_chunks: int = 1  # over 1: a document longer than its window is scored in up to this many overlapping windows
    keep_end: bool = False  # cuts remove the start instead of the end (TEI's truncation_direction "left")


@dataclass(frozen=True)
class RunStats:
    """How the engine ran one call: forward passes (micro-batches), and tokens with and without padding."""

    micro_batches: int = 0
    tokens: int = 0
    padded_tokens: int = 0

    def plus(self, tokens: int, padded_tokens: int) -> "RunStats":
        """These figures with one more forward pass."""
        return RunStats(self.micro_batches + 1, self.tokens + tokens, self.padded_tokens + padded_tokens)

    def __add__(self, other: "RunStats") -> "RunStats":
        return RunStats(self.micro_batches + other.micro_batches, self.tokens + other.tokens,
                        self.padded_tokens + other.padded_tokens)


@dataclass
class Scores:
    score: np.ndarray  # float32, per pair
    raw_score: np.ndarray  # float32, per pair
    num_tokens: np.ndarray  # int32, per pair, after truncation
    input_tokens: np.ndarray  # int32, per pair, before truncation
    truncated: np.ndarray  # bool, per pair
    chunks: np.ndarray | None = None  # int32, per pair: windows scored (None: one each)
    run: RunStats = field(default_factory=RunStats)

    def __post_init__(self) -> None:
        if self.chunks is None:
            self.chunks = np.ones(len(self.score), np.int32)
