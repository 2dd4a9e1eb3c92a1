"""Real clients against the real stack (gateway and tritonserver processes):
the Cohere Python SDK, Jina-shaped HTTP, and `reranker eval`, whose ranking
figures must equal those computed with sentence-transformers on the same model."""

from __future__ import annotations

import json
import subprocess
import sys

import cohere
import httpx
import numpy as np
import pytest

from client import RerankerClient
from client.evaluation import mrr_at_k, ndcg_at_k, read_jsonl
from tests import stack
from tests.tiny_models import SHARED_DIR, minilm_source

pytestmark = pytest.mark.integration

QUERY = "What is the capital of the United States?"
DOCUMENTS = [
    "Carson City is the capital city of the American state of Nevada.",
    "The Commonwealth of the Northern Mariana Islands is a group of islands in the Pacific Ocean.",
    "Washington, D.C. is the capital of the United States. It is a federal district.",
    "Capital punishment has existed in the United States since before it was a country.",
    "North Dakota is a state in the United States. 672,591 people lived in North Dakota in 2010.",
]
DBPEDIA = SHARED_DIR / "data" / "eval" / "dbpedia-entity-rerank.jsonl"


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    process = stack.start_gateway(triton.ports["grpc"], tmp_path_factory.mktemp("gw") / "gateway.log", model="bge")
    yield process
    stack.stop(process.process)


def test_cohere_sdk_rerank(gateway):
    co = cohere.ClientV2(api_key="unused", base_url=gateway.url())
    answer = co.rerank(model="bge", query=QUERY, documents=DOCUMENTS, top_n=3)
    scores = [r.relevance_score for r in answer.results]
    assert len(answer.results) == 3 and scores == sorted(scores, reverse=True)
    with RerankerClient(gateway.url()) as client:
        singles = [client.rerank(QUERY, d) for d in DOCUMENTS]
    best = sorted(range(5), key=lambda i: (-singles[i], i))[:3]
    assert [r.index for r in answer.results] == best
    assert scores == pytest.approx([singles[i] for i in best], abs=1e-6)


API_KEY = "sk-cohere-sdk-45c48cce2e2d7fbdea1afc51c7c6ad26"


@pytest.fixture(scope="module")
def keyed_gateway(triton, tmp_path_factory):
    log = tmp_path_factory.mktemp("keyed") / "gateway.log"
    process = stack.start_gateway(triton.ports["grpc"], log, model="bge",
                                  env={"RERANKER_API_KEYS": f"{API_KEY} score cohere-sdk"})
    yield process
    stack.stop(process.process)


def test_cohere_sdk_with_a_real_key_and_a_wrong_one(keyed_gateway):
    # The SDK sends its api_key as `Authorization: Bearer <key>`, which is what the gateway checks.
    co = cohere.ClientV2(api_key=API_KEY, base_url=keyed_gateway.url())
    answer = co.rerank(model="bge", query=QUERY, documents=DOCUMENTS, top_n=2)
    with RerankerClient(keyed_gateway.url(), api_key=API_KEY) as client:
        best = client.rerank_documents(QUERY, DOCUMENTS, top_n=2)["results"]
    assert [r.index for r in answer.results] == [r["index"] for r in best]
    assert [r.relevance_score for r in answer.results] == pytest.approx([r["relevance_score"] for r in best], abs=1e-6)
    wrong = cohere.ClientV2(api_key=API_KEY[:-1] + "0", base_url=keyed_gateway.url())
    with pytest.raises(cohere.errors.UnauthorizedError) as refused:
        wrong.rerank(model="bge", query=QUERY, documents=DOCUMENTS)
    assert refused.value.status_code == 401 and refused.value.body["error_type"] == "invalid_api_key"
    assert refused.value.headers["www-authenticate"].startswith("Bearer")
    assert API_KEY not in keyed_gateway.log.read_text()  # neither key is ever logged
    assert API_KEY[:-1] not in keyed_gateway.log.read_text()


def test_hundred_documents_score_like_hundred_single_pairs(gateway):
    documents = [f"{DOCUMENTS[i % 5]} (variant {i}, {'extra words ' * (i % 9)})" for i in range(100)]
    co = cohere.ClientV2(api_key="unused", base_url=gateway.url())
    answer = co.rerank(model="bge-reranker-base", query=QUERY, documents=documents)
    listed = {r.index: r.relevance_score for r in answer.results}
    with RerankerClient(gateway.url()) as client:
        singles = [client.rerank(QUERY, d) for d in documents]
    assert sorted(listed) == list(range(100))
    assert [listed[i] for i in range(100)] == pytest.approx(singles, abs=1e-6)


def test_jina_shaped_request(gateway):
    body = {"model": "bge", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2,
            "return_documents": True}
    response = httpx.post(f"{gateway.url()}/v1/rerank", json=body, timeout=60)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
    assert float(response.headers["x-inference-time"]) > 0


def test_eval_command_equals_sentence_transformers(gateway):
    from sentence_transformers import SentenceTransformer

    with RerankerClient(gateway.url()) as client:
        client.switch_model("minilm", keep_loaded=True)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "launcher.cli", "eval", "--data", str(DBPEDIA), "--url", gateway.url(),
             "--model", "minilm"],
            capture_output=True, text=True, check=True, cwd=stack.REPO_ROOT,
        ).stdout
    finally:
        with RerankerClient(gateway.url()) as client:
            client.switch_model("bge")
    served = json.loads(out)

    model = SentenceTransformer(str(minilm_source()), device="cpu")
    ndcg, mrr = [], []
    for row in read_jsonl(DBPEDIA):
        query = model.encode([row["query"]], normalize_embeddings=True)
        documents = model.encode(row["documents"], normalize_embeddings=True)
        cosine = (documents @ query.T).ravel()
        ranked = [row["labels"][i] for i in sorted(range(len(cosine)), key=lambda i: (-cosine[i], i))]
        ndcg.append(ndcg_at_k(ranked))
        mrr.append(mrr_at_k(ranked))
    assert served["queries"] == 40 and served["model"] == "minilm-l6"
    assert served["ndcg_at_10"] == pytest.approx(np.mean(ndcg), abs=1e-9)
    assert served["mrr_at_10"] == pytest.approx(np.mean(mrr), abs=1e-9)
    assert served["ndcg_at_10"] > served["original_ndcg_at_10"] + 0.2  # a real model beats the shuffled order


def test_ranking_metrics_on_a_worked_example():
    # Labels in ranked order [0, 2, 1]: DCG = 3/log2(3) + 1/log2(4); ideal [2, 1, 0]: 3/log2(2) + 1/log2(3).
    expected = (3 / np.log2(3) + 1 / 2) / (3 + 1 / np.log2(3))
    assert ndcg_at_k([0, 2, 1]) == pytest.approx(expected)
    assert ndcg_at_k([2, 1, 0]) == 1.0 and ndcg_at_k([0, 0]) == 0.0
    assert mrr_at_k([0, 0, 1]) == pytest.approx(1 / 3) and mrr_at_k([0] * 10 + [1]) == 0.0


def test_rerank_command(gateway, tmp_path):
    documents = tmp_path / "documents.txt"
    documents.write_text("\n".join(DOCUMENTS) + "\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "rerank", "--query", QUERY, "--documents-file", str(documents),
         "--top-n", "2", "--url", gateway.url()],
        capture_output=True, text=True, check=True, cwd=stack.REPO_ROOT,
    ).stdout
    results = json.loads(out)["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert [r["document"]["text"] for r in results] == [DOCUMENTS[r["index"]] for r in results]
