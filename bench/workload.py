"""The benchmark workload of issue 6, shared by every benchmark: requests of one
query of about 16 tokens and N documents of 64-256 tokens, reproducible from a
seed.

Every word of `WORDS` is one token in both the XLM-R (bge) and the Qwen3
tokenizers, so a text of n words is about n tokens for every model. This
module needs no torch, so gateway-only runs and the perf_analyzer data
generator can use it on a machine without the engine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WORDS = ("river city model search light table paper music garden window market signal energy "
         "history science travel health system water").split()

QUERY_WORDS = 14
"""14 words plus " {n}?" make 16-17 tokens with either tokenizer."""


@dataclass(frozen=True)
class Request:
    """One rerank request: a query and the documents to score against it."""

    query: str
    documents: tuple[str, ...]


def generate(
    requests: int, docs: int, seed: int = 0, doc_words: tuple[int, int] = (64, 256), query_words: int = QUERY_WORDS
) -> list[Request]:
    """`requests` requests of `docs` documents each.

    The random draws are made in the order `bench.engine_bench` always made
    them, so its figures in the README stay reproducible from the same seed.
    """
    rng = random.Random(seed)
    batches = []
    for r in range(requests):
        query = " ".join(rng.choice(WORDS) for _ in range(query_words)) + f" {r}?"
        documents = tuple(" ".join(rng.choice(WORDS) for _ in range(rng.randint(*doc_words))) for _ in range(docs))
        batches.append(Request(query, documents))
    return batches


def describe(docs: int, doc_words: tuple[int, int], query_words: int = QUERY_WORDS) -> str:
    low, high = doc_words
    return f"1 query (~{query_words + 2} tokens) x {docs} documents ({low}-{high} tokens)"
