"""The scorer skeleton every model kind shares: pre (tokenize and truncate),
core (micro-batches through the network), post (activation).

Subclasses say how pairs become token sequences, what one forward pass returns
per sequence, and how those outputs become scores. How the network runs is
chosen once, at construction (`Execution`): padded micro-batches, packed
(padding-free) batches, CUDA-graph replay of small padded ones and of packed
ones (in token buckets), and a pipeline that tokenizes a call's next pairs
while the GPU runs its last ones.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from rerank_engine.batching import plan_micro_batches
from rerank_engine.packing import Packed, Row, pack_chunk, plan_packed
from rerank_engine.pairs import Pair, RunStats, Scores
from rerank_engine.tokens import keep, token_ids, windows

log = logging.getLogger(__name__)

PackedForward = Callable[[Packed], torch.Tensor]
"""One packed batch in, one float row per scored row out."""


@dataclass(frozen=True)
class Execution:
    """How a scorer runs its network; from config.pbtxt's `packed`, `cuda_graphs`, `packed_graphs`,
    `fusions`, `compile` and `pipeline_pairs` parameters (`rerank_engine.contract` says what each means)."""

    packed: bool = False  # padding-free batches; a scorer that cannot pack its model refuses it (ValueError)
    cuda_graphs: bool = False  # CUDA only: small padded micro-batches replay graphs captured at load
    packed_graphs: bool = False  # CUDA only: packed micro-batches replay graphs captured per token bucket
    fusions: tuple[str, ...] = ()  # the packed forward's fused kernels (PackedXLMRoberta.FUSIONS)
    compile: bool = False  # torch.compile the packed forward's layers (cross_encoder)
    pipeline_pairs: int = 0  # >0: a call is tokenized and launched in pieces of this many pairs


@dataclass
class Encoded:
    """Token sequences to run, and per-pair accounting of what was sent."""

    sequences: list[list[int]]
    num_tokens: np.ndarray  # int32, per pair, after truncation
    input_tokens: np.ndarray  # int32, per pair, before truncation
    truncated: np.ndarray  # bool, per pair
    rows: np.ndarray | None = None  # per pair, the sequences it scores from (None: sequence i is pair i)


class Scorer(ABC):
    """Scores (query, document) pairs with one model on one device.

    Lifecycle: construct (the model is on its device), `prepare()` once (graph
    captures and a first pass, so no live request pays for them), then
    `score()` from one thread at a time.
    """

    def __init__(
        self,
        *,
        device: torch.device,
        max_length: int,
        max_batch_tokens: int,
        max_batch_size: int,
        pad_id: int,
        chunk_tokens: int | None = None,
        execution: Execution = Execution(),
        memory_budget_bytes: int | None = None,
    ) -> None:
        self.device = device
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.chunk_tokens = min(chunk_tokens or max_length, max_length)
        self.pad_id = pad_id
        self.memory_budget_bytes = memory_budget_bytes
        self.execution = execution
        self.packed: PackedForward | None = self.packed_forward() if execution.packed else None
        self.position_start = getattr(self.packed, "position_start", 0)  # the model's first position id
        self.graphs = None
        self.graph_rows = 0  # with packing on, calls of at most this many sequences still run padded (graphs)
        if execution.cuda_graphs:
            from rerank_engine.cuda_graphs import PACKED_HANDOFF_ROWS, GraphedForward

            self.graphs = GraphedForward(self.forward, pad_id, device, max_batch_tokens)
            self.graph_rows = PACKED_HANDOFF_ROWS
        self.packed_graphs = None
        if execution.packed_graphs and self.packed is not None and device.type == "cuda":
            from rerank_engine.cuda_graphs import PackedGraphs

            self.packed_graphs = PackedGraphs(self.packed, device, pad_id, self.position_start, max_length,
                                              max_rows=max_batch_size)
        self.pipeline_pairs = execution.pipeline_pairs

    @classmethod
    def packable(cls, model) -> bool:
        """Whether this scorer has a packed forward for `model`'s architecture."""
        return False

    def packed_forward(self) -> PackedForward:
        """The padding-free forward for this scorer's model (called when `Execution.packed` is on)."""
        raise ValueError(f"{type(self).__name__} has no packed forward")

    def prepare(self) -> None:
        """What no live request should pay for: CUDA graph captures, the memory check, then a first pass.

        On a GPU the allocator is capped at the memory budget, and the heaviest
        batches a request can cause run once: while they do not fit, the token
        budget of a micro-batch is halved. Every later batch stays under those
        budgets, so no request the API accepts runs out of memory.
        """
        cuda = self.device.type == "cuda"
        if cuda and self.memory_budget_bytes:
            total = torch.cuda.get_device_properties(self.device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, self.memory_budget_bytes / total), self.device)
        if self.graphs is not None:
            self.graphs.prepare(self.graph_rows, self.max_length)
        if cuda:
            self.fit_memory()
        if self.packed_graphs is not None:
            # After the memory check: buckets up to the token budget it settled on.
            self.packed_graphs.prepare(self.max_batch_tokens)
        self.score([Pair("warm-up query", "warm-up document")])

    def fit_memory(self) -> None:
        """Halve `max_batch_tokens` until the heaviest batches run without running out of memory."""
        cuda = self.device.type == "cuda"
        while True:
            try:
                self.heaviest_batches()
                if cuda:
                    torch.cuda.synchronize(self.device)
                break
            except torch.OutOfMemoryError:
                if cuda:
                    torch.cuda.empty_cache()
                if self.max_batch_tokens // 2 < self.max_length:
                    budget = f"{self.memory_budget_bytes / 2**20:.0f} MiB" if self.memory_budget_bytes else "none"
                    held = torch.cuda.memory_allocated(self.device) / 2**20 if cuda else 0.0
                    raise MemoryError(
                        f"one {self.max_length}-token sequence does not fit in GPU memory (budget: {budget}; the "
                        f"model holds {held:.0f} MiB): raise gpu_memory_budget_mib or lower max_length"
                    ) from None
                self.max_batch_tokens //= 2
                log.warning("the heaviest batch does not fit in GPU memory: max_batch_tokens now %d",
                            self.max_batch_tokens)
        if cuda:
            torch.cuda.empty_cache()
            log.info("memory check: peak %.0f MiB reserved (budget %s MiB), max_batch_tokens %d",
                     torch.cuda.max_memory_reserved(self.device) / 2**20,
                     round(self.memory_budget_bytes / 2**20) if self.memory_budget_bytes else "none",
                     self.max_batch_tokens)

    def heaviest_batches(self) -> None:
        """Run the micro-batches that take the most memory: a full token budget of longest sequences.
        A scorer whose batches can grow some other way (Qwen3's gathered head keys) adds its own."""
        longest = [[self.pad_id] * self.max_length] * max(1, self.max_batch_tokens // self.max_length)
        self.run(longest)

    def score(self, pairs: Sequence[Pair]) -> Scores:
        if not pairs:
            empty, none = np.zeros(0, np.float32), np.zeros(0, np.int32)
            return Scores(empty, empty, none, none, np.zeros(0, bool))
        if any(pair.max_chunks > 1 for pair in pairs):
            return self.score_chunked(pairs)
        if self.pipelined(len(pairs)):
            encoded, outputs, run = self.pipeline(pairs)
        else:
            encoded = self.encode(pairs)
            outputs, run = self.infer(encoded)
        score, raw = self.finalize(encoded, outputs)
        return Scores(
            score=score.astype(np.float32, copy=False),
            raw_score=raw.astype(np.float32, copy=False),
            num_tokens=encoded.num_tokens,
            input_tokens=encoded.input_tokens,
            truncated=encoded.truncated,
            run=run,
        )

    def pipelined(self, pairs: int) -> bool:
        """Whether a call of this many pairs runs as a pipeline (`pipeline_pairs`): packed batches, and a
        scorer whose sequences are independent (one that overrides `infer` shares work between them)."""
        return (0 < self.pipeline_pairs < pairs and self.packed is not None
                and type(self).infer is Scorer.infer)

    def pipeline(self, pairs: Sequence[Pair]) -> tuple[Encoded, torch.Tensor, RunStats]:
        """`encode` then `infer`, a piece of `pipeline_pairs` pairs at a time, all launched before any result
        is read: the GPU's work is queued asynchronously, so the host tokenizes piece k+1 while the GPU
        runs piece k. Unpipelined, a call tokenizes all its pairs first and the GPU waits that long
        (bge on an H200: ~6 ms per 100 pairs, against ~8.6 ms of kernels)."""
        pieces: list[Encoded] = []
        outputs: list[torch.Tensor] = []
        order: list[int] = []
        run = RunStats()
        for start in range(0, len(pairs), self.pipeline_pairs):
            encoded = self.encode(pairs[start : start + self.pipeline_pairs])
            piece_outputs, piece_order, piece_run = self.launch(encoded.sequences)
            offset = sum(len(p.sequences) for p in pieces)
            outputs.extend(piece_outputs)
            order.extend(offset + i for i in piece_order)
            run += piece_run
            pieces.append(encoded)
        encoded = Encoded(
            sequences=[s for p in pieces for s in p.sequences],
            num_tokens=np.concatenate([p.num_tokens for p in pieces]),
            input_tokens=np.concatenate([p.input_tokens for p in pieces]),
            truncated=np.concatenate([p.truncated for p in pieces]),
        )
        return encoded, self.gather(outputs, order), run

    def score_chunked(self, pairs: Sequence[Pair]) -> Scores:
        """Each document longer than the room its query leaves is split into overlapping token windows
        (`tokens.windows`), every window is scored with the query as a pair of its own, in the same
        micro-batches as everything else, and the document gets its best window's score.

        The windows are cut from the document's token ids, tokenized once, so each holds exactly the
        tokens it would hold in the whole text. `num_tokens` sums what the model read over the windows;
        `truncated` says that a window was cut (a long query) or that tokens past the last window
        were left unscored.
        """
        whole = self.document_ids(pairs)
        rooms = self.document_room(pairs)
        expanded: list[Pair] = []
        window_ids: list[list[int]] = []
        owners: list[int] = []
        unscored = np.zeros(len(pairs), np.int32)
        for index, (pair, ids, room) in enumerate(zip(pairs, whole, rooms)):
            capped = self.capped(ids, pair)
            # One window is the whole (capped) document, cut by `encode` as without chunking.
            spans = windows(len(capped), room, pair.max_chunks, pair.keep_end) if pair.max_chunks > 1 else [
                (0, len(capped))]
            unscored[index] = len(ids) - (spans[-1][1] - spans[0][0])  # the windows overlap: one covered stretch
            for start, end in spans:
                expanded.append(pair._replace(max_document_tokens=None, max_chunks=1))
                window_ids.append(capped[start:end])
                owners.append(index)
        encoded = self.encode(expanded, window_ids)
        outputs, run = self.infer(encoded)
        score, raw = self.finalize(encoded, outputs)
        owner = np.array(owners)
        # Best window first per pair: order by (pair, -score) and keep each pair's first row.
        order = np.lexsort((-score, owner))
        best = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        num_tokens = np.bincount(owner, encoded.num_tokens, len(pairs)).astype(np.int32)
        window_cuts = np.bincount(owner, encoded.input_tokens - encoded.num_tokens, len(pairs)).astype(np.int32)
        input_tokens = num_tokens + window_cuts + unscored
        return Scores(
            score=score[best].astype(np.float32, copy=False),
            raw_score=raw[best].astype(np.float32, copy=False),
            num_tokens=num_tokens,
            input_tokens=input_tokens,
            truncated=input_tokens > num_tokens,
            chunks=np.bincount(owner, minlength=len(pairs)).astype(np.int32),
            run=run,
        )

    @abstractmethod
    def encode(self, pairs: Sequence[Pair], documents: Sequence[list[int]] | None = None) -> Encoded:
        """Tokenize and truncate; every sequence must fit the pair's limit (`limit`). `documents`, when
        given, are the documents' token ids already (chunk windows), as `document_ids` makes them."""

    @abstractmethod
    def document_room(self, pairs: Sequence[Pair]) -> list[int]:
        """Per pair, how many document tokens one chunk window holds: what fits in `window_limit` tokens
        beside its query without a cut."""

    def check(self, pairs: Sequence[Pair]) -> None:
        """Refuse (ValueError) the pairs of one request this scorer cannot build a sequence for, before
        they join a batch whose other requests would otherwise fail with them."""

    def limit(self, pair: Pair) -> int:
        """The most tokens a sequence of this pair may hold: the model's limit, or the request's if lower."""
        return self.max_length if pair.max_tokens is None else min(self.max_length, pair.max_tokens)

    def window_limit(self, pair: Pair) -> int:
        """The most tokens a sequence of one of this pair's chunk windows holds (`chunk_tokens`)."""
        return min(self.limit(pair), self.chunk_tokens)

    def document_text(self, document: str) -> str:
        """The document as it is tokenized (Qwen3 puts a space before it)."""
        return document

    def document_ids(self, pairs: Sequence[Pair]) -> list[list[int]]:
        """Each pair's whole document as token ids, each distinct text tokenized once."""
        texts = list(dict.fromkeys(self.document_text(pair.document) for pair in pairs))
        ids = dict(zip(texts, token_ids(self.tokenizer, texts)))
        return [ids[self.document_text(pair.document)] for pair in pairs]

    @staticmethod
    def capped(document: list[int], pair: Pair) -> list[int]:
        """The document ids under the pair's own cap, if it has one."""
        return document if pair.max_document_tokens is None else keep(document, pair.max_document_tokens, pair.keep_end)

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

    def infer(self, encoded: Encoded) -> tuple[torch.Tensor, RunStats]:
        """Per-sequence outputs, in `encode` order, and how they were run. A scorer that knows which
        sequences share work (Qwen3's per-query prompt head) overrides this."""
        return self.run(encoded.sequences)

    def run(self, sequences: list[list[int]]) -> tuple[torch.Tensor, RunStats]:
        outputs, order, run = self.launch(sequences)
        return self.gather(outputs, order), run

    @torch.inference_mode()
    def launch(self, sequences: list[list[int]]) -> tuple[list[torch.Tensor], list[int], RunStats]:
        """Every micro-batch of `sequences` launched, nothing read back: (outputs on the device, the
        sequence index of each output row, run figures). `gather` reads them."""
        if self.packed is not None and len(sequences) > self.graph_rows:
            return self.launch_packed([], [(None, s) for s in sequences])
        forward = self.graphs or self.forward
        lengths = [len(s) for s in sequences]
        order: list[int] = []
        outputs: list[torch.Tensor] = []
        run = RunStats()
        for group in plan_micro_batches(lengths, self.max_batch_tokens, self.max_batch_size):
            input_ids, attention_mask, group_lengths = self._pad([sequences[i] for i in group])
            run = run.plus(sum(lengths[i] for i in group), input_ids.numel())
            outputs.append(forward(input_ids, attention_mask, group_lengths).float())
            order.extend(group)
        return outputs, order, run

    def run_packed(self, heads: Sequence[Sequence[int]], rows: Sequence[Row]) -> tuple[torch.Tensor, RunStats]:
        """Per-row outputs, in `rows` order, from packed chunks under the token budget."""
        outputs, order, run = self.launch_packed(heads, rows)
        return self.gather(outputs, order), run

    @torch.inference_mode()
    def launch_packed(self, heads: Sequence[Sequence[int]],
                      rows: Sequence[Row]) -> tuple[list[torch.Tensor], list[int], RunStats]:
        """`run_packed`'s chunks launched, nothing read back (see `launch`)."""
        forward = self.packed_graphs or self.packed
        order: list[int] = []
        outputs: list[torch.Tensor] = []
        run = RunStats()
        for chunk in plan_packed(heads, rows, self.max_batch_tokens):
            batch = pack_chunk(heads, rows, chunk, self.device, self.position_start)
            run = run.plus(batch.tokens, batch.tokens)
            outputs.append(forward(batch).float())
            order.extend(chunk)
        return outputs, order, run

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

