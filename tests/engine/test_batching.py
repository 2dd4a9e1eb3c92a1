"""Micro-batch planning, and scores that do not depend on which other pairs
share the batch: padding, length sorting and micro-batch cuts must not leak
into any pair's score."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from rerank_engine.batching import plan_micro_batches
from rerank_engine.scoring import Pair
from tests.engine.samples import LONG, MEDIUM, PANDA, PANDA_ZH, PARIS


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("budget", "cap"), [(2048, 16), (600, 4), (100, 256), (5000, 1)])
def test_every_item_lands_once_within_budget_and_cap(seed, budget, cap):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 700, size=int(rng.integers(1, 300))).tolist()
    groups = plan_micro_batches(lengths, max_batch_tokens=budget, max_batch_size=cap)
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        assert 1 <= len(group) <= cap
        width = max(lengths[i] for i in group)
        assert len(group) * width <= budget or len(group) == 1


def test_an_item_over_the_budget_gets_a_batch_of_its_own():
    groups = plan_micro_batches([10, 5000, 10, 20], max_batch_tokens=100, max_batch_size=8)
    assert [1] in groups
    assert sorted(map(sorted, groups)) == [[0, 2, 3], [1]]


def test_items_are_grouped_by_length_so_padding_stays_small():
    lengths = [5, 400, 6, 390, 7, 410]
    groups = plan_micro_batches(lengths, max_batch_tokens=1300, max_batch_size=8)
    assert sorted(map(sorted, groups)) == [[0, 2, 4], [1, 3, 5]]


def test_the_size_cap_alone_splits():
    assert [len(g) for g in plan_micro_batches([3] * 10, max_batch_tokens=10**6, max_batch_size=4)] == [4, 4, 2]


def test_nothing_to_plan():
    assert plan_micro_batches([], max_batch_tokens=100, max_batch_size=4) == []


MIXED = [
    Pair("what is a panda?", "The giant panda is a bear species endemic to China."),
    Pair("capital of France", LONG),
    Pair("what is a panda?", "hi"),
    Pair("大熊猫吃什么？", PANDA_ZH),
    Pair("panda habitat", MEDIUM),
    Pair("what is a panda?", PANDA * 3),
    Pair(PARIS * 2, "Paris"),
    Pair("emoji 🐼", "🐼🎋"),
]

SCORERS = {
    "bge": ("cross_encoder", "bge_dir", 512),
    "qwen": ("qwen3_reranker", "qwen_dir", 8192),
    "minilm": ("bi_encoder", "minilm_dir", 256),
}


@pytest.mark.parametrize("name", list(SCORERS))
def test_scores_do_not_depend_on_batch_company(request, make_scorer, name):
    kind, folder_fixture, max_length = SCORERS[name]
    folder = request.getfixturevalue(folder_fixture)
    one_batch = make_scorer(kind, folder, max_length=max_length)
    # The same model under a budget this small cuts the list into many
    # micro-batches of different widths. A shallow copy shares the loaded model
    # (loading the XLM-R tokenizer again alone costs seconds).
    many_batches = copy.copy(one_batch)
    many_batches.max_batch_tokens, many_batches.max_batch_size = 300, 3

    lengths = [len(s) for s in many_batches.encode(MIXED).sequences]
    groups = plan_micro_batches(lengths, many_batches.max_batch_tokens, many_batches.max_batch_size)
    assert len(groups) >= 4 and any(len({lengths[i] for i in g}) > 1 for g in groups)
    assert len(plan_micro_batches(lengths, one_batch.max_batch_tokens, one_batch.max_batch_size)) == 1

    alone = np.array([one_batch.score([pair]).score[0] for pair in MIXED])
    together = one_batch.score(MIXED).score
    split = many_batches.score(MIXED).score
    order = np.random.default_rng(0).permutation(len(MIXED))
    shuffled = np.empty(len(MIXED), np.float32)
    shuffled[order] = many_batches.score([MIXED[i] for i in order]).score
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(split, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(shuffled, alone, rtol=0, atol=1e-5)
    assert np.ptp(alone) > 0.05
