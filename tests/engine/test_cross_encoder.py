"""bge-reranker-base parity: the engine's cross-encoder against the model card's
way of scoring, sentence-transformers `CrossEncoder(..., max_length=512).predict`,
on the same (tiny, random) weights, including pairs that need truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rerank_engine.scoring import Pair
from tests.engine.samples import JUST_OVER, LONG, MEDIUM, PANDA, PANDA_ZH, SHORTISH

MAX_LENGTH = 512
BODY = MAX_LENGTH - 4  # <s> A </s></s> B </s>

PAIRS = [
    Pair("what is a panda?", "The giant panda is a bear species endemic to China."),
    Pair("what is a panda?", "hi"),
    Pair("大熊猫吃什么？", PANDA_ZH),
    Pair("emoji 🐼🎋 query", "A 🐼 eats 🎋 all day, every day. 👍🏽👨‍👩‍👧"),
    Pair("  spaced   query ", "a\tdocument\n\nwith   runs of  whitespace  "),
    Pair("an empty document", ""),
    Pair("capital of France", LONG),  # only the document is cut
    Pair(LONG, "short document"),  # only the query is cut
    Pair(SHORTISH, LONG),  # query under half the budget: kept whole, document cut
    Pair(MEDIUM, LONG),  # both over half: both cut to half
    Pair(LONG, MEDIUM),  # the same, query side longer
    Pair(LONG, LONG),  # equal lengths: 254 tokens each
    Pair(JUST_OVER, JUST_OVER + PANDA),  # a few tokens over
]


@pytest.fixture(scope="module")
def reference(bge_dir):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(bge_dir), max_length=MAX_LENGTH, device="cpu")


@pytest.fixture(scope="module")
def ours(bge):
    return bge.score(PAIRS)


def _pairs(pairs):
    return [(p.query, p.document) for p in pairs]


def test_the_cases_exercise_every_truncation_branch(xlmr_tokenizer):
    # Measured with the tokenizer, so a change of the sample texts cannot
    # silently drop a branch of longest_first.
    lengths = [
        (
            len(xlmr_tokenizer(p.query, add_special_tokens=False)["input_ids"]),
            len(xlmr_tokenizer(p.document, add_special_tokens=False)["input_ids"]),
        )
        for p in PAIRS
    ]
    over = [a + b > BODY for a, b in lengths]
    assert over == [False] * 6 + [True] * 7
    only_doc_cut = [i for i, (a, b) in enumerate(lengths) if over[i] and a <= BODY // 2 < b]
    only_query_cut = [i for i, (a, b) in enumerate(lengths) if over[i] and b <= BODY // 2 < a]
    both_cut = [i for i, (a, b) in enumerate(lengths) if over[i] and min(a, b) > BODY // 2]
    assert only_doc_cut == [6, 8] and only_query_cut == [7] and both_cut == [9, 10, 11, 12]
    assert lengths[8][0] > 100  # a long query kept whole next to a longer document
    assert lengths[11][0] == lengths[11][1]


def test_scores_equal_sentence_transformers_cross_encoder(reference, ours):
    assert isinstance(reference.activation_fn, torch.nn.Sigmoid), "CrossEncoder's default for one label"
    expected = reference.predict(_pairs(PAIRS), batch_size=4)
    np.testing.assert_allclose(ours.score, expected, rtol=0, atol=2e-6)
    assert np.ptp(ours.score) > 0.1, "the tiny model must tell pairs apart for parity to mean anything"


def test_raw_score_is_the_logit(reference, ours):
    logits = reference.predict(_pairs(PAIRS), batch_size=4, activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(ours.raw_score, logits, rtol=0, atol=2e-5)
    np.testing.assert_allclose(ours.score, 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=0, atol=2e-6)


def _reference_ids(tokenizer, pairs, **truncation):
    # Batched, as CrossEncoder calls it: a single call would drop an empty document's pair separators.
    return tokenizer([p.query for p in pairs], [p.document for p in pairs], **truncation)["input_ids"]


def test_pair_ids_equal_the_tokenizers_pair_encoding(bge, xlmr_tokenizer):
    encoded = bge.encode(PAIRS)
    expected = _reference_ids(xlmr_tokenizer, PAIRS, truncation=True, max_length=MAX_LENGTH)
    for pair, got, want in zip(PAIRS, encoded.sequences, expected):
        assert got == want, pair.query[:30]


def test_token_counts_and_truncation_flags(ours, xlmr_tokenizer):
    kept = _reference_ids(xlmr_tokenizer, PAIRS, truncation=True, max_length=MAX_LENGTH)
    whole = _reference_ids(xlmr_tokenizer, PAIRS)
    assert ours.num_tokens.tolist() == [len(ids) for ids in kept]
    assert ours.input_tokens.tolist() == [len(ids) for ids in whole]
    assert ours.truncated.tolist() == [len(ids) > MAX_LENGTH for ids in whole]
    assert ours.num_tokens.dtype == np.int32 and ours.truncated.dtype == bool
    assert ours.score.dtype == np.float32 and ours.raw_score.dtype == np.float32
    assert ours.truncated.sum() == 7 and (ours.num_tokens[ours.truncated] == MAX_LENGTH).all()


def test_empty_batch(bge):
    scores = bge.score([])
    assert scores.score.shape == scores.raw_score.shape == scores.num_tokens.shape == scores.truncated.shape == (0,)
