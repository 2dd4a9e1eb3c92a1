"""The gateway's `/metrics`: each figure checked against the requests that
produced it, on the in-process app and a real Triton."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.anyio


async def samples(api) -> dict[tuple[str, frozenset], float]:
    response = await api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(metrics, name: str, **labels) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


async def test_a_rerank_request_is_counted_with_its_documents_and_tokens(api):
    before = await samples(api)
    documents = ["Pandas eat bamboo.", "The Eiffel tower is in Paris.", "Bears hibernate in winter."]
    response = await api.post("/v1/rerank", json={"query": "what do pandas eat?", "documents": documents})
    assert response.status_code == 200
    after = await samples(api)
    route = {"route": "/v1/rerank", "model": "minilm-l6"}
    count = "reranker_request_duration_seconds_count"
    assert value(after, count, status="200", **route) - value(before, count, status="200", **route) == 1
    docs = value(after, "reranker_request_documents_sum", **route) - value(before, "reranker_request_documents_sum", **route)
    assert docs == len(documents)
    tokens = value(after, "reranker_request_tokens_sum", **route) - value(before, "reranker_request_tokens_sum", **route)
    assert tokens == response.json()["usage"]["total_tokens"]
    inference = "reranker_inference_duration_seconds_sum"
    assert value(after, inference, model="minilm-l6") > value(before, inference, model="minilm-l6")
    assert value(after, "reranker_requests_in_flight") == 0


async def test_refusals_are_counted_by_reason(api):
    before = await samples(api)
    assert (await api.post("/v1/rerank", json={"query": " ", "documents": ["d"]})).status_code == 422
    assert (await api.post("/v1/rerank", content=b"{}", headers={"content-type": "text/plain"})).status_code == 415
    assert (await api.post("/v1/rerank", json={"query": "q", "documents": ["d"], "model": "nope"})).status_code == 400
    after = await samples(api)
    for reason in ("invalid_request", "unsupported_media_type", "unknown_model"):
        name = "reranker_rejections_total"
        assert value(after, name, reason=reason) - value(before, name, reason=reason) == 1, reason


@pytest.mark.slow
async def test_switches_are_counted_and_move_the_active_model(api):
    response = await api.post("/switch_model", json={"model_name": "bge"})
    assert response.status_code == 200
    failed = await api.post("/switch_model", json={"model_name": "missing-weights"})
    assert failed.status_code == 503
    metrics = await samples(api)
    assert value(metrics, "reranker_active_model", model="bge-reranker-base") == 1
    assert value(metrics, "reranker_active_model", model="minilm-l6") == 0
    assert value(metrics, "reranker_model_switches_total", model="bge-reranker-base", outcome="ok") >= 1
    assert value(metrics, "reranker_model_switches_total", model="missing-weights", outcome="failed") == 1
    assert value(metrics, "reranker_model_switch_duration_seconds_count", model="bge-reranker-base") >= 1
    rerank = await api.post("/rerank", json={"query": "q", "document": "d"})
    assert rerank.status_code == 200
    after = await samples(api)
    labels = {"route": "/rerank", "model": "bge-reranker-base", "status": "200"}
    assert value(after, "reranker_request_duration_seconds_count", **labels) >= 1


async def test_known_series_start_at_zero(api):
    # A series that first appears at 1 is no change to Prometheus: the first overload or the
    # first switch to a model would vanish from rate(), increase() and the dashboard's annotations.
    metrics = await samples(api)
    for reason in ("overloaded", "backend_timeout", "model_not_ready", "in_flight_limit", "body_too_large"):
        assert ("reranker_rejections_total", frozenset({"reason": reason}.items())) in metrics, reason
    never_switched_to = {"model": "qwen3-reranker-8b", "outcome": "ok"}
    assert metrics[("reranker_model_switches_total", frozenset(never_switched_to.items()))] == 0
    assert metrics[("reranker_model_switch_duration_seconds_count", frozenset({"model": "qwen3-reranker-8b"}.items()))] == 0


async def test_refusals_before_any_route_are_timed_and_counted_but_scrapes_are_not(api):
    before = await samples(api)
    refused = await api.post("/v1/rerank", content=b"{}", headers={"content-type": "text/plain"})
    assert refused.status_code == 415 and float(refused.headers["x-total-time"]) > 0
    assert "x-inference-time" not in refused.headers  # nothing was scored
    missing = await api.post("/no-such-route", json={})
    assert missing.status_code == 404 and "x-total-time" in missing.headers
    after = await samples(api)
    name = "reranker_rejections_total"
    for reason in ("unsupported_media_type", "not_found"):
        assert value(after, name, reason=reason) - value(before, name, reason=reason) == 1, reason
    scrapes = [key for key in after if key[0] == "reranker_request_duration_seconds_count"
               and ("route", "/metrics") in key[1]]
    assert scrapes == []
