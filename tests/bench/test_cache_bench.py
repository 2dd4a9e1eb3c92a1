"""The score cache benchmark's workload (bench/cache_bench.py): the distinct pairs and repeat share it
promises, requests of 1 query x 20-100 documents, Zipf-popular queries, the same from the same seed."""

from __future__ import annotations

from collections import Counter

from bench.cache_bench import DOCS_PER_REQUEST, distinct_pairs, zipf_workload


def test_the_workload_has_the_distinct_pairs_and_repeats_it_is_asked_for():
    requests = zipf_workload(2_000, 0.5, 1.0, seed=0, doc_words=(4, 8))
    pairs = sum(len(r.documents) for r in requests)
    assert abs(distinct_pairs(requests) - 2_000) < 60 and abs(pairs - 4_000) <= DOCS_PER_REQUEST[1]
    assert all(DOCS_PER_REQUEST[0] <= len(r.documents) <= DOCS_PER_REQUEST[1] for r in requests)
    assert all(len(set(r.documents)) == len(r.documents) for r in requests)
    popularity = [count for _, count in Counter(r.query for r in requests).most_common()]
    assert popularity[0] > 5 * popularity[len(popularity) // 2]  # a few queries come back often: Zipf's head
    assert zipf_workload(2_000, 0.5, 1.0, seed=0, doc_words=(4, 8)) == requests
    assert zipf_workload(2_000, 0.5, 1.0, seed=1, doc_words=(4, 8)) != requests
