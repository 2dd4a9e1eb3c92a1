"""The per-request `max_document_tokens` cap: a pair whose document is cut to k
tokens must score exactly like the same pair sent with only those k tokens,
while `input_tokens` still counts the uncut pair and `truncated` is set.

The documents repeat a word that each tokenizer keeps as one token, so the
k-token document is simply the first k words.
"""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.scoring import Pair
from tests.engine.samples import LONG

WORD = "world"

CASES = {
    "bge": ("cross_encoder", "bge_dir", 512),
    "qwen": ("qwen3_reranker", "qwen_dir", 8192),
    "minilm": ("bi_encoder", "minilm_dir", 256),
}


def words(n: int) -> str:
    return " ".join([WORD] * n)


@pytest.mark.parametrize("name", list(CASES))
def test_a_capped_document_scores_as_the_cut_document(request, make_scorer, name):
    kind, folder_fixture, max_length = CASES[name]
    scorer = make_scorer(kind, request.getfixturevalue(folder_fixture), max_length=max_length)
    # One token per word, as the scorer itself tokenizes documents.
    lengths = scorer.encode([Pair("q", words(n)) for n in (1, 2, 30)]).num_tokens
    assert lengths[2] - lengths[1] == 28 and lengths[1] - lengths[0] == 1

    capped = [
        Pair("what is said?", words(80), None, 10),
        Pair("what is said?", words(80), None, 1),
        Pair("what is said?", words(5), None, 10),  # the cap is above the document: no cut
        Pair("what is said?", words(80), "Find greetings", 30),
    ]
    cut = [
        Pair("what is said?", words(10)),
        Pair("what is said?", words(1)),
        Pair("what is said?", words(5)),
        Pair("what is said?", words(30), "Find greetings"),
    ]
    got, want = scorer.score(capped), scorer.score(cut)
    uncut = scorer.score([p._replace(max_document_tokens=None) for p in capped])
    np.testing.assert_allclose(got.score, want.score, rtol=0, atol=1e-6)
    assert got.num_tokens.tolist() == want.num_tokens.tolist()
    assert got.input_tokens.tolist() == uncut.num_tokens.tolist()
    assert got.truncated.tolist() == [True, True, False, True]
    assert not uncut.truncated.any()


def test_the_cap_comes_before_the_models_own_truncation(bge, xlmr_tokenizer):
    # A 400-word document capped to 300 next to a ~960-token query: longest_first
    # then splits the 508-token body between the two as for a 300-word document.
    capped = bge.score([Pair(LONG, words(400), None, 300)])
    cut = bge.score([Pair(LONG, words(300))])
    np.testing.assert_allclose(capped.score, cut.score, rtol=0, atol=1e-6)
    assert capped.num_tokens[0] == 512 and capped.truncated[0]
    assert capped.input_tokens[0] == len(xlmr_tokenizer(LONG, words(400))["input_ids"])
