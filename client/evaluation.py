"""Ranking quality through the running service: nDCG@k and MRR@k of the
service's order, next to the same figures for the file's original order.

Input: JSON lines of {"query", "documents", "labels"} (graded labels, higher
is more relevant), such as ../shared/data/eval/*.jsonl.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from client.client import RerankerClient


def ndcg_at_k(ranked_labels: Sequence[float], k: int = 10) -> float:
    """nDCG with exponential gain (2^label - 1) and a log2(rank + 1) discount."""

    def dcg(labels: Sequence[float]) -> float:
        return sum((2**label - 1) / math.log2(rank + 2) for rank, label in enumerate(labels[:k]))

    ideal = dcg(sorted(ranked_labels, reverse=True))
    return dcg(ranked_labels) / ideal if ideal > 0 else 0.0


def mrr_at_k(ranked_labels: Sequence[float], k: int = 10) -> float:
    return next((1.0 / (rank + 1) for rank, label in enumerate(ranked_labels[:k]) if label > 0), 0.0)


@dataclass(frozen=True)
class EvalReport:
    queries: int
    model: str
    ndcg_at_10: float
    mrr_at_10: float
    original_ndcg_at_10: float
    original_mrr_at_10: float

    def as_dict(self) -> dict:
        return asdict(self)


def read_jsonl(path: Path) -> list[dict]:
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which occur inside texts.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def evaluate(client: RerankerClient, path: Path, model: str | None = None, k: int = 10) -> EvalReport:
    rows = read_jsonl(path)
    served, original, served_model = [], [], ""
    for row in rows:
        answer = client.rerank_documents(row["query"], row["documents"], model=model)
        served_model = answer["model"]
        served.append([row["labels"][r["index"]] for r in answer["results"]])
        original.append(row["labels"])

    def mean(metric, rankings) -> float:
        return sum(metric(r, k) for r in rankings) / len(rankings)

    return EvalReport(
        queries=len(rows),
        model=served_model,
        ndcg_at_10=mean(ndcg_at_k, served),
        mrr_at_10=mean(mrr_at_k, served),
        original_ndcg_at_10=mean(ndcg_at_k, original),
        original_mrr_at_10=mean(mrr_at_k, original),
    )
