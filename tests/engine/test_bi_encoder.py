"""all-MiniLM-L6-v2 parity: the engine's bi-encoder scores against the cosine of
sentence-transformers' normalised embeddings of the real model, including a
text longer than the model's 256-token window."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.scoring import Pair
from tests.engine.samples import LONG, PANDA_ZH

MAX_LENGTH = 256

PAIRS = [
    Pair("what is a panda?", "The giant panda is a bear species endemic to China."),
    Pair("what is a panda?", "A recipe for apple pie with cinnamon."),
    Pair("大熊猫吃什么？", PANDA_ZH),
    Pair("emoji 🐼🎋 query", "A 🐼 eats 🎋 all day, every day."),
    Pair("capital of France", LONG),  # the document is cut at 256 tokens
    Pair(LONG, "Paris"),  # the query is cut
    Pair("same text", "same text"),
    Pair("", "an empty query"),
]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_scores_equal_sentence_transformers_cosine(minilm, reference):
    assert reference.max_seq_length == MAX_LENGTH
    queries = reference.encode([p.query for p in PAIRS], normalize_embeddings=True, batch_size=3)
    documents = reference.encode([p.document for p in PAIRS], normalize_embeddings=True, batch_size=3)
    expected = (queries.astype(np.float64) * documents).sum(axis=1)
    ours = minilm.score(PAIRS)
    np.testing.assert_allclose(ours.score, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours.raw_score, ours.score)
    assert ours.score[0] > ours.score[1] + 0.2, "the real model ranks the panda answer over the pie"
    assert ours.score[6] == pytest.approx(1.0, abs=1e-5)


def test_token_counts_and_truncation_flags(minilm, bert_tokenizer):
    ours = minilm.score(PAIRS)

    def kept(text):
        return len(bert_tokenizer(text, truncation=True, max_length=MAX_LENGTH)["input_ids"])

    def whole(text):
        return len(bert_tokenizer(text)["input_ids"])

    assert ours.num_tokens.tolist() == [kept(p.query) + kept(p.document) for p in PAIRS]
    assert ours.input_tokens.tolist() == [whole(p.query) + whole(p.document) for p in PAIRS]
    assert ours.truncated.tolist() == [whole(p.query) > MAX_LENGTH or whole(p.document) > MAX_LENGTH for p in PAIRS]
    assert ours.truncated.tolist() == [False] * 4 + [True, True] + [False] * 2


def test_a_shared_query_is_embedded_once(minilm):
    encoded = minilm.encode([Pair("q", "a"), Pair("q", "b"), Pair("a", "q")])
    assert len(encoded.sequences) == 3  # "q", "a", "b"
