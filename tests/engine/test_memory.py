"""Memory bounds that a CPU can check: a loaded model records no autograd
history, the heaviest batches shrink the token budget until they fit, and a
packed chunk's gathered keys stay under their budget however long the query.
The peaks themselves are measured on a GPU (bench.rerank_bench, bench.memory_check)."""

from __future__ import annotations

import pytest
import torch

from rerank_engine.packing import KEYS_PER_TOKEN, plan_packed


def test_a_loaded_model_needs_no_gradients(bge, qwen, minilm):
    for scorer in (bge, qwen, minilm):
        assert not any(p.requires_grad for p in scorer.model.parameters())


def test_the_token_budget_halves_until_the_heaviest_batch_fits(bge, monkeypatch):
    scorer = bge
    monkeypatch.setattr(scorer, "max_batch_tokens", 32768)  # restored afterwards: the scorer is the session's
    tried = []

    def heaviest():
        tried.append(scorer.max_batch_tokens)
        if scorer.max_batch_tokens > 4096:
            raise torch.OutOfMemoryError("CUDA out of memory")
        scorer.run([[5] * scorer.max_length] * (scorer.max_batch_tokens // scorer.max_length))

    monkeypatch.setattr(scorer, "heaviest_batches", heaviest)
    scorer.fit_memory()
    assert tried == [32768, 16384, 8192, 4096] and scorer.max_batch_tokens == 4096


def test_a_budget_too_small_for_one_sequence_fails_the_load_clearly(bge, monkeypatch):
    scorer = bge
    monkeypatch.setattr(scorer, "max_batch_tokens", 1024)

    def never_fits():
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(scorer, "heaviest_batches", never_fits)
    with pytest.raises(MemoryError, match="one 512-token sequence does not fit.*gpu_memory_budget_mib"):
        scorer.fit_memory()


def test_the_default_heaviest_batch_is_a_full_budget_of_longest_sequences(bge, monkeypatch):
    scorer = bge
    monkeypatch.setattr(scorer, "max_batch_tokens", 2048)
    seen = []
    monkeypatch.setattr(scorer, "run", lambda sequences: seen.append([len(s) for s in sequences]))
    scorer.heaviest_batches()
    assert seen == [[512] * 4]


def test_gathered_keys_stay_under_their_budget_with_a_long_query():
    head = list(range(8000))
    rows = [(0, [1])] * 1000  # 1,000 one-token documents under an 8,000-token query
    budget = 32768
    chunks = plan_packed([head], rows, budget)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(1000))
    for chunk in chunks:
        keys = sum(len(head) + len(rows[i][1]) for i in chunk)
        tokens = len(head) + len(chunk)
        assert keys <= KEYS_PER_TOKEN * budget and tokens <= budget
    assert len(chunks) == -(-1000 // (KEYS_PER_TOKEN * budget // 8001))
