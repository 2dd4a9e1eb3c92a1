"""The public HTTP contract tests of vLLM, Text Embeddings Inference and Infinity,
ported to this gateway (in process, against the session's real Triton serving
the real all-MiniLM-L6-v2), each naming its source file. Where this gateway
answers differently on purpose, the ported assertion says what we answer and
why; README "Migrating from TEI / vLLM / Cohere / Jina" lists every difference.

vLLM's bi-encoder file is ported whole, because minilm is a bi-encoder as its
model (BAAI/bge-base-en-v1.5) is; its reference, sentence-transformers' cosine
of the two embeddings, is the reference here too. The cross-encoder file's
tests that only a cross-encoder shows (use_activation, max_tokens_per_doc) run
on the tiny bge."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from tests.tiny_models import minilm_source

pytestmark = pytest.mark.anyio

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # vLLM's tests name models by their Hugging Face id

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]


@pytest.fixture(scope="module")
def hf_model():
    """vLLM's `EncoderScoringHfRunner`: the cosine of sentence-transformers' normalised embeddings."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_source()), device="cpu")

    class Runner:
        @staticmethod
        def predict(pairs: list[list[str]]) -> np.ndarray:
            first = model.encode([a for a, _ in pairs], normalize_embeddings=True)
            second = model.encode([b for _, b in pairs], normalize_embeddings=True)
            return (first * second).sum(axis=1)

    return Runner()


def _valid_score_response(body: dict, count: int) -> list[float]:
    # vLLM's ScoreResponse.model_validate: id, object "list", model, data[{index, object "score", score}], usage.
    assert body["id"] and body["object"] == "list" and body["model"] == "minilm-l6"
    assert [d["index"] for d in body["data"]] == list(range(count))
    assert all(d["object"] == "score" for d in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    return [d["score"] for d in body["data"]]


# --- vLLM: tests/entrypoints/pooling/scoring/test_bi_encoder_online.py ---------------------------------------


@pytest.mark.parametrize(
    ("fields", "pairs"),
    [
        # test_score_api_queries_str_1_documents_str_1
        ({"queries": TEXTS_1[0], "documents": TEXTS_2[0]}, [[TEXTS_1[0], TEXTS_2[0]]]),
        # test_score_api_queries_str_1_documents_str_n
        ({"queries": TEXTS_1[0], "documents": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[0], TEXTS_2[1]]]),
        # test_score_api_queries_str_n_documents_str_n, test_score_api_queries_vs_documents
        ({"queries": TEXTS_1, "documents": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
        # test_score_api_queries_vs_items
        ({"queries": TEXTS_1, "items": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
        # test_score_api_text_1_vs_text_2
        ({"text_1": TEXTS_1, "text_2": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
        # test_score_api_data_1_vs_data_2
        ({"data_1": TEXTS_1, "data_2": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
    ],
)
@pytest.mark.parametrize("path", ["/score", "/v1/score"])
async def test_vllm_score_api(api, hf_model, path, fields, pairs):
    response = await api.post(path, json={"model": MODEL_NAME, **fields})
    assert response.status_code == 200, response.json()
    vllm_outputs = _valid_score_response(response.json(), len(pairs))
    hf_outputs = hf_model.predict(pairs).tolist()
    for i in range(len(vllm_outputs)):
        assert hf_outputs[i] == pytest.approx(vllm_outputs[i], rel=0.01)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
async def test_vllm_rerank_api_texts(api, path):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    response = await api.post(path, json={"model": MODEL_NAME, "query": query, "documents": documents})
    assert response.status_code == 200
    rerank = response.json()
    assert rerank["id"] is not None and len(rerank["results"]) == 2
    paris_result = next(r for r in rerank["results"] if r["index"] == 1)
    brazil_result = next(r for r in rerank["results"] if r["index"] == 0)
    assert paris_result["relevance_score"] > brazil_result["relevance_score"]
    assert rerank["usage"]["prompt_tokens"] > 0  # vLLM's usage field, beside ours


async def test_vllm_rerank_api_top_n(api):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.",
                 "Cross-encoder models are neat"]
    response = await api.post("/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents, "top_n": 2})
    assert response.status_code == 200
    rerank = response.json()
    assert rerank["id"] is not None and len(rerank["results"]) == 2
    assert rerank["results"][0]["index"] == 1


async def test_vllm_rerank_api_max_model_len(api):
    query = "What is the capital of France?" * 100
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    # vLLM refuses an over-long pair unless asked to cut it; this gateway cuts by default (Cohere's rule)
    # and reports it, so vLLM's refusal is `truncate: false` here: a 400 naming the text and the limit.
    body = {"model": MODEL_NAME, "query": query, "documents": documents}
    assert (await api.post("/rerank", json=body)).json()["usage"]["truncated_documents"] == 2
    response = await api.post("/rerank", json={**body, "truncate": False})
    assert response.status_code == 400
    assert "over the 256-token limit of minilm-l6; shorten it" in response.text


async def test_vllm_score_api_max_model_len(api):
    queries = "What is the capital of France?" * 20  # 141 tokens: fits minilm's 256 (vLLM's test runs at 100)
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    body = {"model": MODEL_NAME, "queries": queries * 2, "documents": documents}
    response = await api.post("/score", json={**body, "truncate": False})
    assert response.status_code == 400
    assert "over the 256-token limit" in response.text
    # Test truncation: a truncation size over the model's limit is refused (vLLM: 400; here the 422 of
    # every invalid field).
    response = await api.post("/score", json={**body, "truncate_prompt_tokens": 257})
    assert response.status_code == 422
    assert response.json()["field"] == "truncate_prompt_tokens"
    assert "request a smaller truncation size" in response.text


async def test_vllm_invocations(api):
    # test_invocations: SageMaker's /invocations answers a rerank body as /rerank does.
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    request_args = {"model": MODEL_NAME, "query": query, "documents": documents}
    rerank_response = await api.post("/rerank", json=request_args)
    invocation_response = await api.post("/invocations", json=request_args)
    assert rerank_response.status_code == invocation_response.status_code == 200, invocation_response.json()
    rerank_output, invocation_output = rerank_response.json(), invocation_response.json()
    assert rerank_output.keys() == invocation_output.keys()
    for rerank_result, invocations_result in zip(rerank_output["results"], invocation_output["results"]):
        assert rerank_result.keys() == invocations_result.keys()
        assert rerank_result["relevance_score"] == pytest.approx(invocations_result["relevance_score"], rel=0.01)


@pytest.mark.parametrize("fields", [{"queries": TEXTS_1, "documents": TEXTS_2}, {"text_1": TEXTS_1, "text_2": TEXTS_2},
                                    {"data_1": TEXTS_1[0], "data_2": TEXTS_2}])
async def test_vllm_invocations_routes_a_score_body_to_score(api, fields):
    # Not in vLLM's tests; its router (vllm/entrypoints/sagemaker/api_router.py) tries the invocation types of
    # vllm/entrypoints/pooling/factories.py in order, RerankRequest before ScoreRequest: a body that is no
    # rerank request (no `query`) is scored as /score scores it.
    score = await api.post("/score", json={"model": MODEL_NAME, **fields})
    invocation = await api.post("/invocations", json={"model": MODEL_NAME, **fields})
    assert score.status_code == invocation.status_code == 200, invocation.json()
    count = len(fields.get("text_2") or fields.get("data_2") or fields["documents"])
    assert _valid_score_response(invocation.json(), count) == pytest.approx(_valid_score_response(score.json(), count))
    # Neither form: the rerank form's missing field is named (vLLM: 400 "Cannot find suitable handler").
    refused = await api.post("/invocations", json={"model": MODEL_NAME, "query": "q"})
    assert refused.status_code == 422 and refused.json()["field"] == "documents", refused.json()


async def test_vllm_use_activation_on_a_bi_encoder(api):
    # vLLM's use_activation=false returns a cross-encoder's logit (test_vllm_use_activation_... below); a
    # bi-encoder's score is a cosine with no activation to leave out, so this gateway refuses it, naming the
    # field, rather than answer scores that look raw and are not.
    body = {"model": MODEL_NAME, "query": TEXTS_1[0], "documents": TEXTS_2}
    for path, request in [("/rerank", body), ("/v1/rerank", body), ("/score", {"model": MODEL_NAME, "text_1": TEXTS_1,
                                                                             "text_2": TEXTS_2})]:
        response = await api.post(path, json={**request, "use_activation": False})
        assert response.status_code == 400, response.json()
        assert response.json()["field"] == "use_activation" and "bi-encoder" in response.json()["error"]
        assert (await api.post(path, json={**request, "use_activation": True})).status_code == 200


async def test_vllm_basic_models(api):
    # vLLM's test_basic, /v1/models half (this gateway has no /tokenize).
    response = await api.get("/v1/models")
    served = response.json()["data"][0]
    assert response.json()["object"] == "list" and served["object"] == "model"
    assert served["id"] == "minilm-l6" and served["root"] == MODEL_NAME  # both names are accepted as `model`
    assert served["max_model_len"] == 256 and isinstance(served["created"], int)


# --- vLLM: tests/entrypoints/pooling/scoring/test_cross_encoder_online.py (the cross-encoder-only tests) ------


@pytest.fixture
async def bge_loaded(api):
    await api.post("/switch_model", json={"model_name": "bge", "keep_loaded": True})
    yield "BAAI/bge-reranker-base"
    await api.post("/switch_model", json={"model_name": "minilm"})


@pytest.mark.slow
async def test_vllm_use_activation_and_max_tokens_per_doc(api, bge_loaded):
    model = bge_loaded
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]

    async def get_outputs(use_activation):
        body = {"model": model, "query": query, "documents": documents, "use_activation": use_activation}
        results = (await api.post("/rerank", json=body)).json()["results"]
        return np.array([x["relevance_score"] for x in sorted(results, key=lambda r: r["index"])])

    default = await get_outputs(use_activation=None)
    w_activation = await get_outputs(use_activation=True)
    wo_activation = await get_outputs(use_activation=False)
    assert np.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not np.allclose(w_activation, wo_activation, atol=1e-2), "wo_activation should not use activation."
    assert np.allclose(1 / (1 + np.exp(-wo_activation)), w_activation, atol=1e-2)

    # test_rerank_max_tokens_per_doc_reduces_tokens
    long_doc = "The capital of France is Paris. " * 10
    no_limit = await api.post("/rerank", json={"model": model, "query": query, "documents": [long_doc],
                                               "truncate_prompt_tokens": 99})
    with_limit = await api.post("/rerank", json={"model": model, "query": query, "documents": [long_doc],
                                                 "max_tokens_per_doc": 10})
    assert with_limit.json()["usage"]["prompt_tokens"] < no_limit.json()["usage"]["prompt_tokens"] <= 99
    # test_rerank_max_tokens_per_doc_validation: vLLM answers 400; this gateway 422, naming the field.
    for value in (0, -5):
        response = await api.post("/rerank", json={"model": model, "query": query, "documents": documents,
                                                   "max_tokens_per_doc": value})
        assert response.status_code == 422 and response.json()["field"] == "max_tokens_per_doc"


# --- TEI: router/tests/test_http_rerank.rs -------------------------------------------------------------------


async def test_tei_rerank(api):
    request = {"query": "test", "texts": ["test", "other", "test"], "return_text": True}
    response = await api.post("/rerank", json=request)
    assert response.status_code == 200
    ranks = response.json()
    assert [set(rank) for rank in ranks] == [{"index", "score", "text"}] * 3  # TEI's Rank, a bare list
    assert [rank["text"] for rank in ranks] == [request["texts"][rank["index"]] for rank in ranks]
    # TEI asserts index 2, then 0: its sort reverses ties. This gateway keeps request order on ties (the
    # rule of every form), so the two equal "test" texts come 0, then 2.
    assert ranks[0]["index"] == 0 and ranks[1]["index"] == 2
    assert ranks[0]["score"] == ranks[1]["score"]
    assert ranks[2]["index"] == 1 and ranks[2]["score"] < ranks[0]["score"]


async def test_tei_rerank_empty_texts(api):
    # router/src/http/server.rs, rerank: an empty `texts` is ErrorType::Empty, which TEI answers with 400 and
    # {"error": "`texts` cannot be empty", "error_type": "empty"}.
    response = await api.post("/rerank", json={"query": "test", "texts": []})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "`texts` cannot be empty" and body["error_type"] == "empty"
    assert body["field"] == "texts"  # this gateway's addition, as on every error


# --- Infinity: libs/infinity_emb/tests/end_to_end/test_torch_reranker.py --------------------------------------

EIFFEL = "Where is the Eiffel Tower located?"


async def test_infinity_model_route(api):
    response = await api.get("/v1/models")
    assert response.status_code == 200
    rdata = response.json()
    assert "data" in rdata and rdata["data"][0].get("id", "") == "minilm-l6"
    # Infinity also lists `stats` (its queue figures); this gateway's are on /metrics.


async def test_infinity_reranker(api, hf_model):
    documents = [
        "My favorite dish is a hamburger.",
        "The Eiffel Tower is located in the United States.",
        "The Eiffel Tower is located in Paris, France",
        "The Eiffel Tower is located in the United Kingdom.",
        "I enjoiy flying to the moon.",
    ]
    response = await api.post("/v1/rerank", json={"model": MODEL_NAME, "query": EIFFEL, "documents": documents})
    assert response.status_code == 200
    rdata = response.json()
    assert "model" in rdata and "usage" in rdata
    rdata_results = sorted(rdata["results"], key=lambda x: x["index"], reverse=False)
    predictions = hf_model.predict([[EIFFEL, doc] for doc in documents])
    assert len(rdata_results) == len(predictions)
    for i, pred in enumerate(predictions):
        assert abs(rdata_results[i]["relevance_score"] - pred) < 0.01


async def test_infinity_reranker_top_n(api, hf_model):
    documents = [
        "The Eiffel Tower is located in the United States.",
        "The Eiffel Tower is located in Paris, France",
        "The Eiffel Tower is located in the United Kingdom.",
    ]
    # Infinity's cross-encoder puts "Paris, France" first. MiniLM, a bi-encoder, ranks these near-copies by
    # their wording and puts "the United States" first; the contract checked is the same: the top result
    # is the document the model scores highest, in every order of the documents.
    reference = hf_model.predict([[EIFFEL, doc] for doc in documents])
    best = documents[int(np.argmax(reference))]

    async def test_inner(query: str, documents: list[str], return_docs: bool, top_n: int):
        response = await api.post("/v1/rerank", json={"model": MODEL_NAME, "query": query, "documents": documents,
                                                      "top_n": top_n, "return_documents": return_docs})
        assert response.status_code == 200
        rdata_results = response.json()["results"]
        assert len(rdata_results) == min(top_n, len(documents))
        assert rdata_results[0]["index"] == documents.index(best)
        if return_docs:
            # Infinity returns the document as a string; this gateway as Cohere's {"text": ...}.
            assert rdata_results[0]["document"]["text"] == best
        return True

    cases = [
        test_inner(EIFFEL, list(docs), return_docs, top_n)
        for docs in itertools.permutations(documents, r=len(documents))
        for top_n in [1, 2, 8000]
        for return_docs in [True, False]
    ]
    assert all(await asyncio.gather(*cases))


async def test_infinity_reranker_invalid_top_n(api):
    documents = ["The Eiffel Tower is located in Paris, France", "The Eiffel Tower is located in the United States."]
    for top_n in (-1, 0):
        response = await api.post("/v1/rerank", json={"model": MODEL_NAME, "query": EIFFEL, "documents": documents,
                                                      "top_n": top_n})
        assert response.status_code == 422
