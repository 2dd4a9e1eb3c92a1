"""Real clients against the real stack (gateway and tritonserver processes):
the Cohere Python SDK (v2 and v1), llama-index's JinaRerank, haystack's
HuggingFaceTEIRanker and CohereRanker, Jina-shaped HTTP, and the `reranker`
command: `reranker eval`, whose ranking figures must equal those computed with
sentence-transformers on the same model, and `reranker rerank`."""

from __future__ import annotations

import json
import os
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


os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # haystack would post usage statistics


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    process = stack.start_gateway(triton.ports["grpc"], tmp_path_factory.mktemp("gw") / "gateway.log", model="bge")
    yield process
    stack.stop(process.process)


@pytest.fixture(scope="module")
def tolerant_gateway(gateway, triton, tmp_path_factory):
    """A second gateway on the same Triton that serves unknown model names with its active model."""
    process = stack.start_gateway(triton.ports["grpc"], tmp_path_factory.mktemp("gw") / "tolerant.log", model="bge",
                                  env={"RERANKER_UNKNOWN_MODEL": "active"})
    yield process
    stack.stop(process.process)


def single_scores(url: str, documents: list[str]) -> list[float]:
    with RerankerClient(url) as client:
        return [client.rerank(QUERY, d) for d in documents]


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


def test_cohere_v1_sdk_object_documents_rank_fields_and_chunks(gateway):
    # Cohere v1's Client.rerank got 422 "Extra inputs are not permitted" for these fields before.
    documents = [{"title": "Nevada", "text": DOCUMENTS[0]}, {"title": "D.C.", "text": DOCUMENTS[2]}]
    co = cohere.Client(api_key="unused", base_url=gateway.url())
    answer = co.rerank(model="bge", query=QUERY, documents=documents, rank_fields=["title", "text"],
                       max_chunks_per_doc=3, return_documents=True)
    assert sorted(r.index for r in answer.results) == [0, 1]
    assert all(r.document.text == documents[r.index]["text"] for r in answer.results)
    # rank_fields builds "title: ...\ntext: ..." (README, API): the v2 SDK with those strings scores the same.
    texts = [f"title: {d['title']}\ntext: {d['text']}" for d in documents]
    v2 = cohere.ClientV2(api_key="unused", base_url=gateway.url()).rerank(model="bge", query=QUERY, documents=texts)
    assert {r.index: r.relevance_score for r in answer.results} == pytest.approx(
        {r.index: r.relevance_score for r in v2.results}, abs=1e-6)


def test_llama_index_jina_rerank(gateway, tolerant_gateway):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.jinaai_rerank import JinaRerank

    nodes = [NodeWithScore(node=TextNode(text=d)) for d in DOCUMENTS]
    reranked = JinaRerank(base_url=f"{gateway.url()}/v1", api_key="unused", model="bge", top_n=2).postprocess_nodes(
        nodes, query_str=QUERY)
    singles = single_scores(gateway.url(), DOCUMENTS)
    best = sorted(range(5), key=lambda i: (-singles[i], i))[:2]
    assert [n.node.get_content() for n in reranked] == [DOCUMENTS[i] for i in best]
    assert [n.score for n in reranked] == pytest.approx([singles[i] for i in best], abs=1e-6)
    # The client's default model name: a 400 whose message the client can read (it reads `detail`) ...
    with pytest.raises(RuntimeError, match="unknown model 'jina-reranker-v1-base-en'"):
        JinaRerank(base_url=f"{gateway.url()}/v1", api_key="unused").postprocess_nodes(nodes, query_str=QUERY)
    # ... or, with RERANKER_UNKNOWN_MODEL=active, served by the active model.
    served = JinaRerank(base_url=f"{tolerant_gateway.url()}/v1", api_key="unused", top_n=2).postprocess_nodes(
        nodes, query_str=QUERY)
    assert [n.score for n in served] == pytest.approx([singles[i] for i in best], abs=1e-6)


def test_haystack_hugging_face_tei_ranker(gateway):
    from haystack import Document
    from haystack_integrations.components.rankers.huggingface_api import HuggingFaceTEIRanker, TruncationDirection

    documents = [Document(content=d) for d in DOCUMENTS]
    ranker = HuggingFaceTEIRanker(url=gateway.url(), top_k=3)
    ranked = ranker.run(query=QUERY, documents=documents)["documents"]
    singles = single_scores(gateway.url(), DOCUMENTS)
    best = sorted(range(5), key=lambda i: (-singles[i], i))[:3]
    assert [d.content for d in ranked] == [DOCUMENTS[i] for i in best]
    assert [d.score for d in ranked] == pytest.approx([singles[i] for i in best], abs=1e-6)
    left = ranker.run(query=QUERY, documents=documents, truncation_direction=TruncationDirection.LEFT)["documents"]
    assert [d.content for d in left] == [d.content for d in ranked]  # short texts: nothing to cut
    raw = HuggingFaceTEIRanker(url=gateway.url(), top_k=3, raw_scores=True).run(query=QUERY, documents=documents)
    assert [1 / (1 + np.exp(-d.score)) for d in raw["documents"]] == pytest.approx([d.score for d in ranked], abs=1e-5)


def test_haystack_cohere_ranker(gateway, tolerant_gateway):
    from haystack import Document
    from haystack.utils import Secret
    from haystack_integrations.components.rankers.cohere import CohereRanker

    documents = [Document(content=d) for d in DOCUMENTS]
    singles = single_scores(gateway.url(), DOCUMENTS)
    best = sorted(range(5), key=lambda i: (-singles[i], i))[:2]
    for url, model in ((gateway.url(), "BAAI/bge-reranker-base"), (tolerant_gateway.url(), "rerank-v3.5")):
        ranker = CohereRanker(model=model, api_base_url=url, api_key=Secret.from_token("unused"), top_k=2)
        ranked = ranker.run(query=QUERY, documents=documents)["documents"]
        assert [d.score for d in ranked] == pytest.approx([singles[i] for i in best], abs=1e-6)


def test_rerank_command_skips_blank_lines_and_keeps_line_numbers(gateway, tmp_path):
    documents = tmp_path / "documents.txt"
    documents.write_text(f"{DOCUMENTS[0]}\n\n   \n{DOCUMENTS[2]}\n{DOCUMENTS[3]}\n", encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "rerank", "--query", QUERY, "--documents-file", str(documents),
         "--url", gateway.url()],
        capture_output=True, text=True, check=True, cwd=stack.REPO_ROOT,
    ).stdout
    lines = documents.read_text(encoding="utf-8").splitlines()
    results = json.loads(out)["results"]
    assert sorted(r["index"] for r in results) == [0, 3, 4]
    assert all(r["document"]["text"] == lines[r["index"]] and r["line"] == r["index"] + 1 for r in results)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--documents-file", "{missing}"], "reranker: cannot read {missing}: No such file or directory"),
        (["--documents-file", "{file}", "--model", "qwen4b"],
         "reranker: the gateway answered 400 model_not_loaded: model 'qwen4b' is not loaded"),
        (["--documents-file", "{file}", "--url", "http://127.0.0.1:{dead}"],
         "reranker: cannot reach the gateway at http://127.0.0.1:{dead}"),
    ],
)
def test_rerank_command_errors_are_one_line(gateway, tmp_path, arguments, message):
    (dead,) = stack.free_ports(1)
    names = {"missing": tmp_path / "missing.txt", "file": tmp_path / "documents.txt", "dead": dead}
    names["file"].write_text("a document\n", encoding="utf-8")
    arguments = [a.format(**names) for a in arguments]
    if "--url" not in arguments:
        arguments += ["--url", gateway.url()]
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "rerank", "--query", QUERY, *arguments],
                          capture_output=True, text=True, cwd=stack.REPO_ROOT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(message.format(**names)) and done.stderr.count("\n") == 1, done.stderr
