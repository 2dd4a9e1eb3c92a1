"""What clients of other servers send and expect, in process against the real
Triton and the real all-MiniLM-L6-v2: the body decides the form on /rerank,
fields another vendor's client sends are accepted and named in the warnings
(never a typo, never a wrong type), every error body carries `detail`, model
names of other clients, Cohere v1's object documents and rank_fields, and
long documents scored in chunks."""

from __future__ import annotations

import json

import pytest

from gateway.settings import GatewaySettings
from rerank_engine.scoring import Pair
from tests import stack
from tests.app.conftest import in_process
from tests.tiny_models import SHARED_DIR

pytestmark = pytest.mark.anyio

QUERY = "what do giant pandas eat?"
DOCUMENTS = ["Giant pandas eat bamboo almost exclusively.", "The stock market closed higher today."]


async def test_the_body_decides_the_form_of_rerank(api):
    pair = await api.post("/rerank", json={"query": QUERY, "document": DOCUMENTS[0]})
    listed = await api.post("/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    tei = await api.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS})
    assert set(pair.json()) == {"score"}
    assert listed.json()["results"][0]["index"] == 0
    assert [rank["index"] for rank in tei.json()] == [0, 1] and "text" not in tei.json()[0]
    assert tei.json()[0]["score"] == pytest.approx(pair.json()["score"], abs=1e-6)
    assert tei.json()[0]["score"] == pytest.approx(listed.json()["results"][0]["relevance_score"], abs=1e-6)


async def test_tei_raw_scores_truncation_and_its_errors(api, repository, models_dir):
    scorer = stack.engine_scorer(repository, models_dir, "minilm-l6")
    long = "pandas eat bamboo " * 200
    left = (await api.post("/rerank", json={"query": QUERY, "texts": [long + "the end"],
                                            "truncation_direction": "Left"})).json()  # haystack spells it so
    expected = scorer.score([Pair(QUERY, long + "the end", keep_end=True)]).score[0]
    assert left[0]["score"] == pytest.approx(float(expected), abs=1e-6)
    assert expected != pytest.approx(float(scorer.score([Pair(QUERY, long + "the end")]).score[0]), abs=1e-4)
    refused = await api.post("/rerank", json={"query": QUERY, "texts": ["short", long], "truncate": False})
    assert refused.status_code == 400 and refused.json()["field"] == "texts[1]"
    for body, field in [({"query": QUERY, "texts": ["a"], "raw_scores": 1}, "raw_scores"),
                        ({"query": QUERY, "texts": ["a"], "truncation_direction": "up"}, "truncation_direction"),
                        ({"query": QUERY, "texts": ["a"], "top_n": 1}, "top_n")]:
        response = await api.post("/rerank", json=body)
        assert response.status_code == 422 and response.json()["field"] == field, response.json()
    # An empty `texts` gets TEI's own answer (test_vendor_contracts.py), still naming the field.
    empty = await api.post("/rerank", json={"query": QUERY, "texts": []})
    assert empty.status_code == 400 and empty.json()["field"] == "texts", empty.json()


async def test_error_bodies_carry_detail(api):
    for response in [
        await api.post("/v1/rerank", json={"query": QUERY, "documents": []}),  # validation
        await api.post("/v1/rerank", json={"model": "jina-reranker-v1-base-en", "query": QUERY, "documents": ["a"]}),
        await api.post("/rerank", content=b"{", headers={"content-type": "application/json"}),
        await api.get("/no-such-path"),
    ]:
        body = response.json()
        assert response.status_code >= 400 and body["detail"] == body["error"] and body["error_type"]


async def test_foreign_fields_are_named_in_the_warnings_and_typos_are_refused(api):
    body = {"query": QUERY, "documents": DOCUMENTS, "user": "u-1", "request_id": "r-1", "rank_fields": ["text"]}
    response = await api.post("/v1/rerank", json=body)
    warnings = response.json()["meta"]["warnings"]
    assert response.status_code == 200 and len(warnings) == 3
    assert [w.split(" ")[0] for w in warnings] == ["rank_fields", "user", "request_id"]
    assert json.loads(response.headers["x-warnings"]) == warnings
    score = await api.post("/score", json={"text_1": QUERY, "text_2": DOCUMENTS, "user": "u-1"})
    assert json.loads(score.headers["x-warnings"]) == ["user ignored: the gateway does not use it"]
    assert "x-warnings" not in (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).headers
    for field, value in [("top_k", 2), ("user", 7), ("request_id", ["r"]), ("rank_fields", "text"),
                         ("truncation_side", "middle"), ("truncate_prompt_tokens", 0), ("max_chunks_per_doc", 0)]:
        response = await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, field: value})
        assert response.status_code == 422 and response.json()["field"] == field, (field, response.json())


async def test_hugging_face_ids_are_model_names_and_unknown_names_are_400(api):
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "minilm", "minilm-l6"):
        response = await api.post("/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCUMENTS})
        assert response.status_code == 200 and response.json()["model"] == "minilm-l6"
    unknown = await api.post("/v1/rerank", json={"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS})
    assert unknown.status_code == 400 and unknown.json()["error_type"] == "unknown_model"


async def test_unknown_model_names_can_be_served_by_the_active_model(triton):
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm",
                               unknown_model="active")
    async with in_process(settings) as client:
        body = {"model": "jina-reranker-v1-base-en", "query": QUERY, "documents": DOCUMENTS}
        response = await client.post("/v1/rerank", json=body)
        assert response.status_code == 200 and response.json()["model"] == "minilm-l6"
        assert response.json()["meta"]["warnings"] == [
            "model 'jina-reranker-v1-base-en' is unknown; the active model minilm-l6 answered"]
        # A known model that is not loaded is still a 400: the name is right, the state is not.
        not_loaded = await client.post("/v1/rerank", json={**body, "model": "bge"})
        assert not_loaded.status_code == 400 and not_loaded.json()["error_type"] == "model_not_loaded"


async def test_cohere_v1_object_documents_and_rank_fields(api, repository, models_dir):
    documents = [
        {"title": "Bamboo", "text": "Giant pandas eat bamboo.", "year": 2024},
        {"title": "Markets", "text": "The stock market closed higher.", "year": 2023},
    ]
    body = {"query": QUERY, "documents": documents, "rank_fields": ["title", "year", "text"], "return_documents": True}
    response = (await api.post("/v1/rerank", json=body)).json()
    # The text ranked: one "field: value" line per rank field, in rank_fields order, non-strings as JSON.
    texts = ["title: Bamboo\nyear: 2024\ntext: Giant pandas eat bamboo.",
             "title: Markets\nyear: 2023\ntext: The stock market closed higher."]
    expected = stack.engine_scorer(repository, models_dir, "minilm-l6").score([Pair(QUERY, t) for t in texts]).score
    assert {r["index"]: r["relevance_score"] for r in response["results"]} == pytest.approx(
        {0: float(expected[0]), 1: float(expected[1])}, abs=1e-6)
    assert [r["document"] for r in response["results"]] == [documents[r["index"]] for r in response["results"]]
    missing = await api.post("/v1/rerank", json={**body, "rank_fields": ["title", "author"]})
    assert missing.status_code == 422 and missing.json()["field"] == "documents[0].author"
    untitled = await api.post("/v1/rerank", json={"query": QUERY, "documents": [{"title": "no text"}]})
    assert untitled.status_code == 422 and untitled.json()["field"] == "documents[0].text"


async def test_vllm_truncation_options(api, repository, models_dir):
    scorer = stack.engine_scorer(repository, models_dir, "minilm-l6")
    long = "Pandas eat bamboo in the forests of China. " * 40
    body = {"query": QUERY, "documents": [long], "truncate_prompt_tokens": 32, "truncation_side": "left"}
    response = (await api.post("/v1/rerank", json=body)).json()
    expected = scorer.score([Pair(QUERY, long, max_tokens=32, keep_end=True)])
    assert response["results"][0]["relevance_score"] == pytest.approx(float(expected.score[0]), abs=1e-6)
    assert response["usage"]["total_tokens"] == int(expected.num_tokens[0]) <= 64
    whole = (await api.post("/v1/rerank", json={**body, "truncate_prompt_tokens": -1})).json()
    assert whole["usage"]["total_tokens"] > response["usage"]["total_tokens"]
    too_small = await api.post("/v1/rerank", json={**body, "truncate_prompt_tokens": 2})
    assert too_small.status_code == 422 and too_small.json()["field"] == "truncate_prompt_tokens"
    assert "at least 3 tokens" in too_small.json()["error"]
    both = await api.post("/v1/rerank", json={**body, "truncate": False})
    assert both.status_code == 422 and "truncate_prompt_tokens asks to cut" in both.json()["error"]


NEEDLE_QUERY = "axon terminals or synaptic knob definition"
"""A TREC DL 2019 query whose best passage MiniLM finds inside a long document; over all 43 queries it ranks
first in most, not all (README, Long documents: chunking)."""


def _needle_haystack() -> tuple[str, str, list[str]]:
    """The query, and a 5,000-token document of other queries' passages that ends with this query's most
    relevant passage; beside it, the query's own non-relevant passages (half of them BM25-nearest)."""
    rows = [json.loads(line) for line in (SHARED_DIR / "data" / "eval" / "msmarco-trecdl2019-rerank.jsonl").open()]
    row = next(row for row in rows if row["query"] == NEEDLE_QUERY)
    relevant = row["documents"][row["labels"].index(max(row["labels"]))]
    filler = [d for other in rows if other is not row for d, label in zip(other["documents"], other["labels"])
              if label == 0]
    long = ""
    while len(long.split()) < 3_600:  # about 5,000 BERT tokens of real English passages
        long += filler.pop(0) + " "
    negatives = [d for d, label in zip(row["documents"], row["labels"]) if label == 0]
    return row["query"], long + relevant, negatives


async def test_a_relevant_passage_at_the_end_of_a_long_document_is_found_by_chunking(api):
    query, long, negatives = _needle_haystack()
    documents = [*negatives, long]
    plain = (await api.post("/v1/rerank", json={"query": query, "documents": documents})).json()
    chunked = (await api.post("/v1/rerank", json={"query": query, "documents": documents,
                                                  "max_chunks_per_doc": 64})).json()
    assert plain["results"][0]["index"] != len(negatives)  # cut to its first 256 tokens, it ranks below
    assert chunked["results"][0]["index"] == len(negatives)
    best = chunked["results"][0]
    assert best["chunks"] > 20  # about 5,000 tokens in MiniLM's 128-token windows
    assert chunked["usage"]["chunks"] == sum(r["chunks"] for r in chunked["results"])
    assert chunked["usage"]["total_tokens"] > plain["usage"]["total_tokens"] + 20 * 128  # every window counted
    assert chunked["meta"]["truncated_documents"] == 0 and plain["meta"]["truncated_documents"] >= 1


async def test_chunking_limits(api):
    long = "Pandas eat bamboo in the forests of China. " * 100
    refused = await api.post("/v1/rerank", json={"query": QUERY, "documents": [long], "max_chunks_per_doc": 2,
                                                 "truncate": False})
    assert refused.status_code == 400 and refused.json()["field"] == "documents[0]"
    assert "needs more than 2 windows" in refused.json()["error"]
    too_many = await api.post("/v1/rerank", json={"query": QUERY, "documents": ["a"] * 101,
                                                  "max_chunks_per_doc": 100})
    assert too_many.status_code == 422 and too_many.json()["field"] == "max_chunks_per_doc"
    assert "over the limit of 10000 chunks per request" in too_many.json()["error"]


@pytest.mark.slow
async def test_chunking_by_default_and_through_the_fan_out(triton, repository, models_dir):
    # minilm's max_batch_size is 256: 260 documents go to Triton as two requests, each chunked there.
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm",
                               max_chunks_per_doc=4)
    long = "Pandas eat bamboo in the forests of China. " * 30
    documents = [f"document {i}: " + (long if i % 64 == 0 else "a short one") for i in range(260)]
    async with in_process(settings) as client:
        listed = (await client.post("/v1/rerank", json={"query": QUERY, "documents": documents})).json()
        tei = (await client.post("/rerank", json={"query": QUERY, "texts": documents[:2]})).json()
    served = {r["index"]: r for r in listed["results"]}
    long_ones = [0, 64, 128, 192, 256]
    expected = stack.engine_scorer(repository, models_dir, "minilm-l6").score(
        [Pair(QUERY, documents[i], max_chunks=4) for i in long_ones])
    assert [served[i]["chunks"] for i in long_ones] == expected.chunks.tolist() and min(expected.chunks) > 1
    assert [served[i]["relevance_score"] for i in long_ones] == pytest.approx(expected.score.tolist(), abs=1e-6)
    assert all(served[i]["chunks"] == 1 for i in served if i not in long_ones)
    assert listed["usage"]["chunks"] == sum(r["chunks"] for r in listed["results"])
    assert {r["index"]: r["score"] for r in tei} == pytest.approx(
        {i: served[i]["relevance_score"] for i in range(2)}, abs=1e-6)
