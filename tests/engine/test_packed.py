"""Packed (padding-free) forward passes equal the model cards' recipes and the
padded path, on the tiny float32 models: mixed lengths, truncated pairs,
several queries with their shared heads, and chunks that split a query's
documents. On CPU attention runs as a loop over spans; on a GPU the varlen
kernel replaces it (bench.profile_engine --packed-ab compares the two there)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.packed import attention
from rerank_engine.packing import pack
from rerank_engine.scoring import Pair
from tests.engine.samples import LONG, PANDA
from tests.engine.test_cross_encoder import PAIRS as BGE_PAIRS
from tests.engine.test_qwen3_prefix import DOCUMENTS

pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`")

QUERIES = [(None, "what is this text about?"), ("Find physics texts", "Explain gravity"), (None, "capital of France")]
QWEN_PAIRS = random.Random(3).sample(
    [Pair(q, d, i) for i, q in QUERIES for d in DOCUMENTS] + [Pair("a lonely query", "its only document")],
    len(QUERIES) * len(DOCUMENTS) + 1,
)


@pytest.mark.slow
def test_bge_packed_equals_sentence_transformers_cross_encoder(make_scorer, bge_dir, bge):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(bge_dir), max_length=512, device="cpu")
    want = reference.predict([(p.query, p.document) for p in BGE_PAIRS], activation_fn=torch.nn.Sigmoid())
    for budget in (16384, 600):  # one chunk; then one or two pairs per chunk
        packed = make_scorer("cross_encoder", bge_dir, max_length=512, packed="true", max_batch_tokens=budget)
        assert packed.packed is not None
        got = packed.score(BGE_PAIRS)
        np.testing.assert_allclose(got.score, want, rtol=0, atol=1e-5)
        assert got.run.padded_tokens == got.run.tokens == got.num_tokens.sum(), "no padding"
        padded = bge.score(BGE_PAIRS)
        assert got.num_tokens.tolist() == padded.num_tokens.tolist()
        assert got.truncated.tolist() == padded.truncated.tolist() and got.truncated.any()
    assert np.ptp(want) > 0.05, "the tiny model must tell pairs apart for parity to mean anything"


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("budget", [16384, 256])
def test_qwen3_packed_equals_the_model_card_recipe(make_scorer, qwen_dir, recipe, prefix_reuse, budget):
    packed = make_scorer(
        "qwen3_reranker", qwen_dir, max_length=8192, packed="true", prefix_reuse=prefix_reuse, max_batch_tokens=budget
    )
    got = packed.score(QWEN_PAIRS)
    log_probs = recipe.log_probs(QWEN_PAIRS)
    np.testing.assert_allclose(got.score, np.exp(log_probs[:, 1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.raw_score, log_probs[:, 1] - log_probs[:, 0], rtol=0, atol=1e-4)
    assert got.num_tokens.tolist() == [len(ids) for ids in recipe.input_ids(QWEN_PAIRS)]
    scored = int(got.num_tokens.sum())
    if prefix_reuse:
        # Each query's head ran once per chunk it appears in, not once per document.
        assert got.run.tokens < scored
    else:
        assert got.run.tokens == scored
    if budget == 256:
        assert got.run.micro_batches > len(QUERIES), "chunks split the query groups"


def test_qwen3_packed_truncated_pairs_equal_the_recipe(make_scorer, qwen_dir, short_recipe):
    packed = make_scorer("qwen3_reranker", qwen_dir, max_length=128, packed="true")
    padded = make_scorer("qwen3_reranker", qwen_dir, max_length=128, packed="false")
    pairs = [Pair(q, d, i) for i, q in QUERIES for d in (PANDA * 6, LONG, "x")]
    got = packed.score(pairs)
    assert got.truncated.sum() == 6
    np.testing.assert_allclose(got.score, short_recipe.scores(pairs), rtol=0, atol=1e-5)
    # An overlong query is cut apart from the recipe on purpose (test_qwen3.py): the padded path is the reference.
    cut_query = [Pair(LONG, "short"), Pair(LONG, "other", "Find passages about French cities")]
    np.testing.assert_allclose(packed.score(cut_query).score, padded.score(cut_query).score, rtol=0, atol=1e-5)


def _dense_reference(q, k, v, causal):
    """One sequence, the textbook way: softmax(q k^T / sqrt(d)) v with GQA heads repeated."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    logits = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    if causal:  # bottom-right: query i of the last q_len sees keys up to k_len - q_len + i
        q_len, k_len = q.shape[0], k.shape[0]
        allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", F.softmax(logits, dim=-1), v).reshape(q.shape[0], -1)


@pytest.mark.parametrize("causal", [True, False])
def test_span_attention_equals_attention_over_each_whole_sequence(causal):
    torch.manual_seed(0)
    heads, rows = [[1] * 4], [(0, [2] * 3), (None, [3] * 5), (0, [4])]
    batch = pack(heads, rows, torch.device("cpu"))
    q = torch.randn(batch.tokens, 4, 8)
    k, v = torch.randn(batch.tokens, 2, 8), torch.randn(batch.tokens, 2, 8)
    out = attention(q, k[batch.kv_index], v[batch.kv_index], batch, causal=causal)
    # Row 0 as the whole sequence head + row, with the head's queries too; its last 3 outputs are the row's.
    whole = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    want = _dense_reference(q[whole], k[whole], v[whole], causal)[-3:]
    torch.testing.assert_close(out[4:7], want)
    torch.testing.assert_close(out[7:12], _dense_reference(q[7:12], k[7:12], v[7:12], causal))
    last = torch.tensor([0, 1, 2, 3, 12])
    torch.testing.assert_close(out[12:], _dense_reference(q[last], k[last], v[last], causal)[-1:])


def test_packed_setting():
    base = {"scorer": "cross_encoder", "weights_path": "models/x"}
    assert EngineConfig.from_parameters(base).packed == "auto"
    assert EngineConfig.from_parameters({**base, "packed": "true"}).packed == "true"
    with pytest.raises(ValueError, match="'packed' must be auto, true or false"):
        EngineConfig.from_parameters({**base, "packed": "yes"})
    with pytest.raises(ValueError, match="'packed' applies to cross_encoder and qwen3_reranker only"):
        EngineConfig.from_parameters({"scorer": "bi_encoder", "weights_path": "models/x", "packed": "true"})


def test_auto_stays_padded_without_the_varlen_kernel(bge, qwen):
    # On CPU (and in float32) FlashAttention's varlen kernel does not run: auto keeps padded batches.
    assert bge.packed is None and qwen.packed is None


def test_packed_true_refuses_a_model_it_cannot_pack(minilm_dir):
    config = EngineConfig(scorer="cross_encoder", weights_path=str(minilm_dir), packed="true")
    with pytest.raises(ValueError):
        load_scorer(config, torch.device("cpu"))
