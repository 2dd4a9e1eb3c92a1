"""The score cache on the in-process gateway against the session's real Triton:
hits answer exactly what the model answered (the engine's scores), only the
misses reach Triton (its own inference count says so), the bypasses, the
usage field and header, scoping per API key, the metrics, and nothing of it
while the cache is off."""

from __future__ import annotations

import time

import pytest
import tritonclient.http

from gateway.settings import GatewaySettings
from rerank_engine.scoring import Pair
from tests import stack
from tests.app.conftest import in_process
from tests.app.test_metrics import samples, value

pytestmark = pytest.mark.anyio

QUERY = "what do giant pandas eat?"
DOCUMENTS = [f"Document {i}: giant pandas eat {'bamboo' if i % 3 else 'shoots'} in forest {i}." for i in range(100)]
KEYS = "sk-tenant-a-5d41402abc4b2a76b9719d911017c592 score tenant-a; sk-tenant-b-7d793037a0760186574b0282f2f435e7 score tenant-b"


def settings(triton, **extra) -> GatewaySettings:
    return GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm", cache=True,
                           **extra)


@pytest.fixture
async def cached(triton):
    async with in_process(settings(triton)) as client:
        yield client


def rows_scored(triton, model: str = "minilm-l6") -> int:
    """Rows Triton has run for `model` since it was loaded: its own statistics, not the gateway's. Triton
    counts a batch after it has sent the batch's responses: read until two reads agree."""
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{triton.ports['http']}")
    try:
        count = lambda: int(client.get_inference_statistics(model)["model_stats"][0]["inference_count"])  # noqa: E731
        last, deadline = count(), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = count()
            if now == last:
                return now
            last = now
        return last
    finally:
        client.close()


async def rerank(api, documents, headers=None, **body):
    response = await api.post("/v1/rerank", json={"query": QUERY, "documents": documents, "return_raw_scores": True,
                                                   **body}, headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def by_index(body) -> dict[int, tuple[float, float]]:
    return {r["index"]: (r["relevance_score"], r["raw_score"]) for r in body["results"]}


async def test_sixty_hits_of_a_hundred_send_forty_rows_and_answer_what_the_model_answers(cached, triton, repository,
                                                                                         models_dir):
    first = await rerank(cached, DOCUMENTS[:60])
    assert first.headers["x-cache-hits"] == "0" and first.json()["usage"]["cached_documents"] == 0
    before = rows_scored(triton)
    response = await rerank(cached, DOCUMENTS)
    assert rows_scored(triton) - before == 40
    body = response.json()
    assert response.headers["x-cache-hits"] == "60" and body["usage"]["cached_documents"] == 60
    expected = stack.engine_scorer(repository, models_dir, "minilm-l6").score([Pair(QUERY, d) for d in DOCUMENTS])
    for index, (score, raw) in by_index(body).items():
        assert score == pytest.approx(float(expected.score[index]), abs=1e-6)
        assert raw == pytest.approx(float(expected.raw_score[index]), abs=1e-6)
    uncached = (await rerank(cached, DOCUMENTS, headers={"cache-control": "no-cache"})).json()
    assert body["results"] == uncached["results"]  # the same ranking, scores and raw scores, to the bit
    assert {k: v for k, v in body["usage"].items() if k != "cached_documents"} == \
        {k: v for k, v in uncached["usage"].items() if k != "cached_documents"}
    before = rows_scored(triton)
    again = await rerank(cached, DOCUMENTS)
    assert rows_scored(triton) == before and again.headers["x-cache-hits"] == "100"
    assert "x-inference-time" not in again.headers and "x-inference-time" in response.headers  # no Triton time
    assert again.json()["results"] == body["results"]


async def test_chunks_and_truncation_come_back_from_the_cache_as_scored(cached):
    long = "Bamboo forests of Sichuan are the home of the giant panda. " * 80
    body = {"max_chunks_per_doc": 3}
    first = (await rerank(cached, [long, DOCUMENTS[0]], **body)).json()
    hit = await rerank(cached, [long, DOCUMENTS[0]], **body)
    assert hit.headers["x-cache-hits"] == "2"
    assert hit.json()["results"] == first["results"] and {r["chunks"] for r in first["results"]} == {1, 3}
    assert {k: v for k, v in hit.json()["usage"].items() if k != "cached_documents"} == \
        {k: v for k, v in first["usage"].items() if k != "cached_documents"}
    # Refused from the cache as from the model.
    refused = await cached.post("/v1/rerank", json={"query": QUERY, "documents": [long], "truncate": False})
    assert refused.status_code == 400 and refused.json()["field"] == "documents[0]"


async def test_the_bypasses(cached, triton):
    await rerank(cached, DOCUMENTS[:10])
    await rerank(cached, DOCUMENTS[:10])
    for how in ({"headers": {"cache-control": "no-cache"}}, {"cache": False}):
        before = rows_scored(triton)
        response = await rerank(cached, DOCUMENTS[:10], **how)
        assert response.headers["x-cache-hits"] == "0" and rows_scored(triton) - before == 10
    # Single pairs, TEI's form and /v1/score go through the same cache.
    for _ in range(2):
        pair = await cached.post("/rerank", json={"query": QUERY, "document": DOCUMENTS[0]})
        tei = await cached.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS[:3]})
        score = await cached.post("/v1/score", json={"text_1": QUERY, "text_2": DOCUMENTS[:4]})
    assert pair.headers["x-cache-hits"] == "1" and tei.headers["x-cache-hits"] == "3"
    assert score.headers["x-cache-hits"] == "4" and score.json()["usage"]["cached_documents"] == 4


async def test_entries_are_scoped_per_api_key_name(triton):
    a, b = (f"Bearer {entry.split()[0]}" for entry in KEYS.split("; "))
    async with in_process(settings(triton, api_keys=KEYS)) as api:
        for _ in range(2):
            hits = (await rerank(api, DOCUMENTS[:5], headers={"authorization": a})).headers["x-cache-hits"]
        assert hits == "5"
        other = await rerank(api, DOCUMENTS[:5], headers={"authorization": b})
        assert other.headers["x-cache-hits"] == "0"
    async with in_process(settings(triton, api_keys=KEYS, cache_scope="shared")) as api:
        await rerank(api, DOCUMENTS[:5], headers={"authorization": a})
        await rerank(api, DOCUMENTS[:5], headers={"authorization": a})
        assert (await rerank(api, DOCUMENTS[:5], headers={"authorization": b})).headers["x-cache-hits"] == "5"


async def test_the_metrics_count_hits_misses_and_entries(cached):
    await rerank(cached, DOCUMENTS[:7])  # unconfirmed: scored without a look-up
    before = await samples(cached)
    await rerank(cached, DOCUMENTS[:10])
    after = await samples(cached)
    assert value(after, "reranker_cache_hits_total", tier="memory") - \
        value(before, "reranker_cache_hits_total", tier="memory") == 7
    assert value(after, "reranker_cache_misses_total") - value(before, "reranker_cache_misses_total") == 3
    assert value(after, "reranker_cache_entries") == 10
    assert value(after, "reranker_cache_bytes") == 10 * 320
    assert value(before, "reranker_cache_skipped_total", reason="unconfirmed") == 7


async def test_with_the_cache_off_nothing_of_it_shows(api):
    for _ in range(2):
        response = await api.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS[:3]})
    assert "x-cache-hits" not in response.headers and "cached_documents" not in response.json()["usage"]
    score = await api.post("/v1/score", json={"text_1": QUERY, "text_2": DOCUMENTS[:2]})
    assert set(score.json()["usage"]) == {"prompt_tokens", "total_tokens"}
