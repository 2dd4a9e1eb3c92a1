"""Qwen3 shared-prefix reuse: scores with the prompt head computed once per
query equal the full-sequence path and the model card's recipe (test_qwen3.py),
on the tiny float32 Qwen3, whatever the mix of queries, document lengths,
truncation and micro-batch sizes; and the reuse path is the one that ran.

Most tests lower the group size that reuse starts at (a speed setting, tuned on
a GPU), so that groups of a few documents exercise it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rerank_engine import prefix_cache, qwen3
from rerank_engine.scoring import Pair
from tests.engine.samples import LONG, PANDA, PANDA_ZH, PARIS

pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`")

QUERIES = [
    (None, "what is this text about?"),
    ("Find physics texts", "Explain gravity"),
    ("判断文档是否回答了天气问题", "今天天气如何？"),
    (None, "capital of France"),
    ("Given a question, find the passage that answers it", "capital of France"),  # same query, other head
]
# From one token (" " alone, " x") to ~1000 tokens.
DOCUMENTS = ["", "x", "Paris.", PANDA_ZH, "🐼🎋 panda food", PARIS * 3, PANDA * 6, LONG]
GROUPED = [Pair(query, document, instruction) for instruction, query in QUERIES for document in DOCUMENTS]
# Groups too small to be worth a prefix pass: they take the full-sequence path in the same call.
LONE = [Pair("a lonely query", "its only document"), *[Pair("a pair of docs", d) for d in ("one", "two")]]
MIXED = random.Random(6).sample(GROUPED + LONE, len(GROUPED) + len(LONE))


class Spy:
    """Records each prefix pass (its length) and each micro-batch run after it (its rows)."""

    def __init__(self) -> None:
        self.prefixes: list[int] = []
        self.micro_batches: list[tuple[int, int]] = []  # (prefix index, rows)

    @property
    def rows(self) -> int:
        return sum(rows for _, rows in self.micro_batches)


@pytest.fixture
def small_groups(monkeypatch):
    monkeypatch.setattr(prefix_cache, "MIN_TOKENS_SAVED", 256)


@pytest.fixture
def spy(monkeypatch):
    record = Spy()

    class Counted(prefix_cache.SharedPrefix):
        def __init__(self, decoder, ids):
            super().__init__(decoder, ids)
            self.index = len(record.prefixes)
            record.prefixes.append(self.length)

        def run_tails(self, input_ids, attention_mask):
            record.micro_batches.append((self.index, input_ids.shape[0]))
            return super().run_tails(input_ids, attention_mask)

    monkeypatch.setattr(qwen3, "SharedPrefix", Counted)
    return record


@pytest.fixture(scope="module")
def qwen_full(make_scorer, qwen_dir):
    return make_scorer("qwen3_reranker", qwen_dir, max_length=8192, prefix_reuse=False)


def assert_same_scores(got, want):
    np.testing.assert_allclose(got.score, want.score, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.raw_score, want.raw_score, rtol=0, atol=1e-5)
    assert got.num_tokens.tolist() == want.num_tokens.tolist()
    assert got.input_tokens.tolist() == want.input_tokens.tolist()
    assert got.truncated.tolist() == want.truncated.tolist()


def test_groups_are_keyed_by_the_head_ids_after_truncation():
    # Sequences 0 and 1 share their 3-id head; 2 starts the same but its head was cut to 2 ids.
    sequences = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 7], [8, 9]]
    assert prefix_cache.group_by_head(sequences, [3, 3, 2, 1]) == {(1, 2, 3): [0, 1], (1, 2): [2], (8,): [3]}


def test_the_reuse_rule():
    head = tuple(range(64))
    assert not prefix_cache.worth_reusing(head, [0])
    assert not prefix_cache.worth_reusing(head, list(range(32)))  # 31 x 64 = 1984 tokens saved
    assert prefix_cache.worth_reusing(head, list(range(33)))  # 2048


def test_by_default_only_large_groups_reuse(qwen, qwen_full, spy):
    many = [Pair("what is this text about?", f"document {i}: " + PANDA * (i % 3)) for i in range(40)]
    few = [Pair("capital of France", d) for d in DOCUMENTS]
    pairs = random.Random(2).sample(many + few, len(many) + len(few))
    ours = qwen.score(pairs)
    assert len(spy.prefixes) == 1 and spy.rows == len(many), "one prefix pass, for the 40-document group"
    # The run's telemetry counts the prefix once: the tokens the network ran, not those scored.
    assert ours.run.tokens == ours.num_tokens.sum() - (len(many) - 1) * spy.prefixes[0]
    assert_same_scores(ours, qwen_full.score(pairs))


def test_mixed_queries_in_shuffled_order_equal_the_full_path_and_the_recipe(qwen, qwen_full, recipe, small_groups, spy):
    assert qwen.prefix_reuse, "prefix reuse is on by default"
    ours = qwen.score(MIXED)
    assert len(spy.prefixes) == len(QUERIES), "one prefix pass per query group, none for the lone pairs"
    assert spy.rows == len(GROUPED)
    assert_same_scores(ours, qwen_full.score(MIXED))
    log_probs = recipe.log_probs(MIXED)
    np.testing.assert_allclose(ours.score, np.exp(log_probs[:, 1]), rtol=0, atol=1e-5)
    assert ours.num_tokens.tolist() == [len(ids) for ids in recipe.input_ids(MIXED)]
    assert not ours.truncated.any()
    assert np.ptp(ours.score) > 0.1, "the tiny model must tell pairs apart for parity to mean anything"


def test_a_group_over_several_micro_batches(make_scorer, qwen_dir, qwen_full, small_groups, spy):
    small = make_scorer("qwen3_reranker", qwen_dir, max_length=8192, max_batch_tokens=256)
    ours = small.score(MIXED)
    per_prefix = [sum(1 for index, _ in spy.micro_batches if index == p) for p in range(len(spy.prefixes))]
    assert len(per_prefix) == len(QUERIES) and min(per_prefix) >= 3, per_prefix
    # Budgeted as prefix + padded tail per row: ~60 + a few tokens fit 3 or 4 rows in 256.
    assert max(rows for _, rows in spy.micro_batches) <= 4
    assert_same_scores(ours, qwen_full.score(MIXED))


def test_truncated_pairs_equal_the_full_path_and_the_recipe(make_scorer, qwen_dir, short_recipe, small_groups, spy):
    reuse = make_scorer("qwen3_reranker", qwen_dir, max_length=128)
    full = make_scorer("qwen3_reranker", qwen_dir, max_length=128, prefix_reuse=False)
    documents = ["x", "short", PARIS * 4, PANDA * 6, LONG, PANDA_ZH * 9]
    pairs = [
        *[Pair("q", d) for d in documents + ["a", "b"]],  # documents cut, head whole
        *[Pair(LONG, d) for d in documents],  # the query cut: the head fills the body budget
        *[Pair(LONG, d, "Find passages about French cities") for d in documents],
    ]
    pairs = random.Random(1).sample(pairs, len(pairs))
    ours = reuse.score(pairs)
    whole_head = len(reuse.encode([Pair("q", "")]).sequences[0]) - 1 - 9  # all but the document " " and the suffix
    # A cut head leaves room for the suffix only; the two cut heads differ in their instruction.
    assert sorted(spy.prefixes) == [whole_head, 128 - 9, 128 - 9]
    assert_same_scores(ours, full.score(pairs))
    assert ours.num_tokens.tolist() == [len(ids) for ids in short_recipe.input_ids(pairs)]
    assert ours.truncated.sum() >= 2 * len(documents) + 3
    # The recipe cuts a long query's body from the end, document label and all; the
    # engine keeps the label (test_qwen3.py), so only document cuts compare with it.
    document_cut = [i for i, p in enumerate(pairs) if p.query == "q"]
    want = short_recipe.scores([pairs[i] for i in document_cut])
    np.testing.assert_allclose(ours.score[document_cut], want, rtol=0, atol=1e-5)
    assert ours.truncated[document_cut].sum() >= 3


@pytest.mark.slow
def test_bfloat16_reuse_is_as_close_to_float32_as_the_full_path(make_scorer, qwen_dir, qwen_full, small_groups, spy):
    """bf16 keeps 8 significant bits (a relative rounding error of 2^-9) at every
    activation; over the tiny model's two layers that puts the full path's
    log-odds (up to ~5.4 here) about 0.06 off float32, and P(yes) 0.012 off
    (the sigmoid's slope is at most 1/4). Reuse rounds in another order (the
    prefix runs in a pass of its own), so it may land elsewhere within that
    error, not beyond it: 0.025 on P(yes) is twice the full path's error, while
    a wrong position or mask moves scores by tenths."""
    reference = qwen_full.score(MIXED)
    bf16_full = make_scorer("qwen3_reranker", qwen_dir, max_length=8192, dtype="bfloat16", prefix_reuse=False)
    bf16 = make_scorer("qwen3_reranker", qwen_dir, max_length=8192, dtype="bfloat16")
    ours = bf16.score(MIXED)
    assert len(spy.prefixes) == len(QUERIES)
    full_error = np.abs(bf16_full.score(MIXED).score - reference.score).max()
    assert 0 < full_error < 0.025, "bf16's own error on these pairs, the yardstick for the tolerance"
    np.testing.assert_allclose(ours.score, reference.score, rtol=0, atol=0.025)
    np.testing.assert_allclose(ours.raw_score, reference.raw_score, rtol=0, atol=0.1)  # 0.025 / (1/4)
    assert ours.num_tokens.tolist() == reference.num_tokens.tolist()
