"""Token-level building blocks: the tokenizer's special-token layout, the
`longest_first` truncation rule of Hugging Face tokenizers, and a raw
(no padding, no truncation) view of a tokenizer.

Tokenizing queries and documents separately and assembling pairs from ids lets
the engine tokenize a shared query once per request, know each pair's length
before truncation, and truncate exactly where it chooses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tokenizers import Tokenizer


def raw_tokenizer(hf_tokenizer) -> Tokenizer:
    """A copy of the fast tokenizer with padding and truncation switched off.

    Some `tokenizer.json` files (all-MiniLM-L6-v2's among them) enable fixed
    padding; the engine pads per micro-batch itself.
    """
    backend = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def token_ids(backend: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Ids of each text, without special tokens, tokenized in parallel.

    `encode_batch_fast` skips the character offsets nobody here reads; the ids
    are the same as `encode_batch`'s, and a 100-document request tokenizes
    about a fifth faster (`python -m bench.profile_engine`, "tokenizer_*").
    """
    return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]


@dataclass(frozen=True)
class SpecialTokenTemplate:
    """Where a tokenizer puts its special tokens around one or two sequences,
    e.g. `<s> A </s></s> B </s>` for XLM-R or `[CLS] A [SEP]` for BERT."""

    head: tuple[int, ...]
    middle: tuple[int, ...]
    tail: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, backend: Tokenizer, pair: bool) -> "SpecialTokenTemplate":
        # Post-process two one-token sentinels and read the layout off the mask.
        sentinel = backend.encode("x", add_special_tokens=False)
        if len(sentinel.ids) != 1:
            raise ValueError("tokenizer splits the sentinel 'x'; cannot infer its template")
        second = backend.encode("x", add_special_tokens=False) if pair else None
        processed = backend.post_process(sentinel, second, add_special_tokens=True)
        content = [i for i, special in enumerate(processed.special_tokens_mask) if not special]
        ids = processed.ids
        if pair:
            first, last = content
            return cls(tuple(ids[:first]), tuple(ids[first + 1 : last]), tuple(ids[last + 1 :]))
        (only,) = content
        return cls(tuple(ids[:only]), (), tuple(ids[only + 1 :]))

    @property
    def num_special(self) -> int:
        return len(self.head) + len(self.middle) + len(self.tail)

    def build(self, first: Sequence[int], second: Sequence[int] | None = None) -> list[int]:
        if second is None:
            return [*self.head, *first, *self.tail]
        return [*self.head, *first, *self.middle, *second, *self.tail]


def longest_first_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Lengths that Hugging Face's `longest_first` truncation keeps of a pair.

    Mirrors `tokenizers`' rule: when the shorter side fits in half the budget
    only the longer side is cut; otherwise both are cut to about half.
    """
    if len_a + len_b <= budget:
        return len_a, len_b
    short, long_ = sorted((len_a, len_b))
    if short > budget // 2:
        short, long_ = budget // 2, budget // 2 + budget % 2
    else:
        long_ = budget - short
    return (short, long_) if len_a <= len_b else (long_, short)


def keep(ids: Sequence[int], count: int, from_end: bool = False) -> list[int]:
    """The first `count` ids, or with `from_end` the last ones: where truncation cuts."""
    count = max(count, 0)
    return list(ids[len(ids) - count :] if from_end else ids[:count])


CHUNK_OVERLAP = 4
"""Consecutive windows of a chunked document share a quarter of a window (window // CHUNK_OVERLAP tokens),
so a passage cut by one window's edge is whole in the next."""


def windows(length: int, size: int, most: int, from_end: bool = False) -> list[tuple[int, int]]:
    """(start, end) token spans covering `length` tokens in windows of `size`, overlapping by a quarter.

    The last window ends at the text's end, so every window is full. At most `most` windows are kept:
    the first ones, or with `from_end` the last ones; what they leave out is cut.
    """
    size = max(size, 1)
    if length <= size:
        return [(0, length)]
    stride = max(size - size // CHUNK_OVERLAP, 1)
    starts = list(range(0, length - size, stride)) + [length - size]
    spans = [(start, start + size) for start in starts]
    return spans[-most:] if from_end else spans[:most]
