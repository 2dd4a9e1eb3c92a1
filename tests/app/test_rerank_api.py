"""The Cohere/Jina-style rerank API and the pair-scoring API, in process
(`httpx.ASGITransport`) against a real Triton: ordering, top_n, documents,
per-request models, instructions, truncation, fan-out and timing headers."""

from __future__ import annotations

import pytest

from rerank_engine.scoring import Pair
from tests import stack

pytestmark = pytest.mark.anyio

QUERY = "what do giant pandas eat?"
DOCUMENTS = [
    "Giant pandas eat bamboo almost exclusively.",
    "The stock market closed higher today.",
    "Pandas are bears native to south central China.",
    "Bamboo shoots are a staple of the giant panda's diet.",
    "A recipe for chocolate cake.",
]
LONG = "Paris is the capital and most populous city of France, on the Seine. " * 60




def engine_scores(repository, models_dir, model, documents, query=QUERY, **pair_fields):
    scorer = stack.engine_scorer(repository, models_dir, model)
    return [float(x) for x in scorer.score([Pair(query, d, **pair_fields) for d in documents]).score]


async def test_results_are_sorted_with_the_engines_scores(api, repository, models_dir):
    body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).json()
    expected = engine_scores(repository, models_dir, "minilm-l6", DOCUMENTS)
    assert body["model"] == "minilm-l6" and body["id"]
    assert [r["index"] for r in body["results"]] == sorted(range(5), key=lambda i: (-expected[i], i))
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-6)
        assert "document" not in result and "raw_score" not in result
    assert body["results"][0]["index"] in (0, 3)  # the real MiniLM knows what pandas eat
    assert body["usage"]["total_tokens"] > 5 * 3 and body["meta"]["truncated_documents"] == 0


async def test_top_n_documents_and_both_api_versions(api):
    full = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).json()
    jina = {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2, "return_documents": True}
    for path in ("/v1/rerank", "/v2/rerank", "/rerank"):
        body = (await api.post(path, json=jina)).json()
        assert [r["index"] for r in body["results"]] == [r["index"] for r in full["results"][:2]]
        assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[r["index"]] for r in body["results"]]
    clamped = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 50})).json()
    assert len(clamped["results"]) == 5


async def test_ties_keep_document_order(api):
    body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": ["same text"] * 4})).json()
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": " ", "documents": ["a"]}, "query"),
        ({"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": ["a"], "top_n": -2}, "top_n"),
        ({"query": QUERY, "documents": [3]}, "documents[0]"),
        ({"query": QUERY, "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ({"query": QUERY, "documents": ["a"], "instruction": "x" * 4097}, "instruction"),
        ({"query": QUERY, "documents": ["a"], "truncate": False, "max_tokens_per_doc": 9}, "body"),
    ],
)
async def test_bad_rerank_requests_name_the_field(api, body, field):
    response = await api.post("/v1/rerank", json=body)
    assert response.status_code == 422
    assert response.json()["field"].startswith(field), response.json()


async def test_raw_scores_on_request(api):
    body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True})).json()
    assert all(r["raw_score"] == pytest.approx(r["relevance_score"]) for r in body["results"])  # cosine: raw = score


@pytest.mark.slow
async def test_fan_out_scores_like_single_pairs(api):
    # bge's max_batch_size is 256: 300 documents go to Triton as two concurrent requests.
    await api.post("/switch_model", json={"model_name": "bge", "keep_loaded": True})
    try:
        documents = [f"document {i}: " + " ".join(DOCUMENTS[j % 5] for j in range(i % 7 + 1)) for i in range(300)]
        body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": documents})).json()
        listed = {r["index"]: r["relevance_score"] for r in body["results"]}
        singles = [(await api.post("/rerank", json={"query": QUERY, "document": d})).json()["score"] for d in documents]
        # float32 on the CPU: a pair's score moves by ~1e-6 with its batch's size (the matrix kernels block
        # differently), as in tests/engine/test_batching.py; 1.01e-6 was seen on a 2-core AVX2 machine.
        assert [listed[i] for i in range(300)] == pytest.approx(singles, abs=1e-5)
    finally:
        await api.post("/switch_model", json={"model_name": "minilm"})


@pytest.mark.slow
async def test_per_request_model_and_keep_loaded(api, repository, models_dir):
    response = await api.post("/v1/rerank", json={"model": "bge", "query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 400 and response.json()["error_type"] == "model_not_loaded"
    assert "minilm-l6" in response.json()["error"] and response.json()["field"] == "model"
    assert (await api.post("/v1/rerank", json={"model": "gpt", "query": QUERY, "documents": ["a"]})).status_code == 400

    await api.post("/switch_model", json={"model_name": "bge", "keep_loaded": True})
    try:
        assert set((await api.get("/models")).json()["loaded"]) >= {"bge-reranker-base", "minilm-l6"}
        for name, model in (("minilm", "minilm-l6"), ("bge-reranker-base", "bge-reranker-base")):
            body = (await api.post("/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCUMENTS})).json()
            assert body["model"] == model
            expected = engine_scores(repository, models_dir, model, DOCUMENTS)
            assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(dict(enumerate(expected)))
    finally:
        await api.post("/switch_model", json={"model_name": "minilm"})
    assert "bge-reranker-base" not in (await api.get("/models")).json()["loaded"]


@pytest.mark.slow
async def test_instructions_reach_qwen3_and_are_ignored_elsewhere(api, repository, models_dir):
    body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": "x"})).json()
    assert body["meta"]["warnings"] == ["instruction ignored: minilm-l6 is not a Qwen3 reranker"]
    await api.post("/switch_model", json={"model_name": "qwen4b", "keep_loaded": True})
    try:
        instruction = "Find recipes"
        body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "instruction": instruction})).json()
        assert body["meta"]["warnings"] == []
        served = {r["index"]: r["relevance_score"] for r in body["results"]}
        expected = engine_scores(repository, models_dir, "qwen3-reranker-4b", DOCUMENTS, instruction=instruction)
        default = engine_scores(repository, models_dir, "qwen3-reranker-4b", DOCUMENTS)
        assert [served[i] for i in range(5)] == pytest.approx(expected, abs=1e-6)
        assert expected != pytest.approx(default, abs=1e-4)  # the instruction changed the prompt
    finally:
        await api.post("/switch_model", json={"model_name": "minilm"})


async def test_truncation_is_reported_or_refused(api):
    documents = ["short one", LONG, "another short one"]
    body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": documents})).json()
    assert body["meta"]["truncated_documents"] == 1 and body["usage"]["truncated_documents"] == 1
    refused = await api.post("/v1/rerank", json={"query": QUERY, "documents": documents, "truncate": False})
    assert refused.status_code == 400 and refused.json()["error_type"] == "input_too_long"
    assert refused.json()["field"] == "documents[1]"
    assert "documents[1] with the query is" in refused.json()["error"] and "256-token limit" in refused.json()["error"]
    capped = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "max_tokens_per_doc": 3})).json()
    assert capped["meta"]["truncated_documents"] == 5
    uncapped = (await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})).json()
    assert capped["usage"]["total_tokens"] < uncapped["usage"]["total_tokens"]


async def test_score_endpoint_forms(api, repository, models_dir):
    expected = engine_scores(repository, models_dir, "minilm-l6", DOCUMENTS)
    vllm = (await api.post("/v1/score", json={"text_1": QUERY, "text_2": DOCUMENTS})).json()
    assert [d["index"] for d in vllm["data"]] == list(range(5))
    assert [d["score"] for d in vllm["data"]] == pytest.approx(expected, abs=1e-6)
    pairs = {"queries": [QUERY, "chocolate"], "documents": [DOCUMENTS[0], DOCUMENTS[4]]}
    listed = (await api.post("/v1/score", json=pairs)).json()
    assert listed["data"][0]["score"] == pytest.approx(expected[0], abs=1e-6)
    assert listed["usage"]["total_tokens"] > 0 and listed["object"] == "list"
    bad = await api.post("/v1/score", json={"text_1": ["a", "b"], "text_2": ["x", "y", "z"]})
    assert bad.status_code == 422 and "2 queries for 3 documents" in bad.json()["error"]


async def test_timing_headers(api):
    response = await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    total, queue, inference = (float(response.headers[h]) for h in ("x-total-time", "x-queue-time", "x-inference-time"))
    assert 0 < inference <= total and 0 <= queue <= total
    assert "x-total-time" in (await api.get("/health")).headers


@pytest.mark.slow
async def test_a_10_mb_document_is_truncated_and_scored(api):
    huge = "pandas eat bamboo all day long. " * (10 * 2**20 // 32)
    body = (await api.post("/v1/rerank", json={"query": QUERY, "documents": [huge, DOCUMENTS[1]]})).json()
    assert len(huge) >= 10 * 2**20
    assert body["usage"]["truncated_documents"] == 1 and body["results"][0]["index"] == 0
    refused = await api.post("/v1/rerank", json={"query": QUERY, "documents": [huge], "truncate": False})
    assert refused.status_code == 400 and refused.json()["field"] == "documents[0]"


@pytest.mark.slow
async def test_bf16_and_fp8_entries_switch_hot_and_say_their_precision(api, repository, models_dir):
    """The FP8 entry serves the same weights folder; a switch between the two is a plain hot switch."""
    await api.post("/switch_model", json={"model_name": "qwen4b", "keep_loaded": True})
    try:
        switched = await api.post("/switch_model", json={"model_name": "qwen4b-fp8", "keep_loaded": True})
        assert switched.status_code == 200 and switched.json()["model"] == "qwen3-reranker-4b-fp8"
        models = (await api.get("/models")).json()
        assert models["active"] == "qwen3-reranker-4b-fp8"
        assert models["precision"]["qwen3-reranker-4b-fp8"] == "fp8"
        assert models["precision"]["qwen3-reranker-4b"] == models["precision"]["minilm-l6"] == "auto"
        for model in ("qwen3-reranker-4b-fp8", "qwen3-reranker-4b"):
            body = (await api.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS})).json()
            expected = engine_scores(repository, models_dir, model, DOCUMENTS)
            assert {r["index"]: r["relevance_score"] for r in body["results"]} == pytest.approx(
                dict(enumerate(expected)), abs=1e-5)
    finally:  # each switch without keep_loaded unloads the model it leaves
        await api.post("/switch_model", json={"model_name": "qwen4b"})
        await api.post("/switch_model", json={"model_name": "minilm"})
    assert (await api.get("/models")).json()["loaded"] == ["minilm-l6"]
