"""In-process gateway tests: the FastAPI app driven through
`httpx.ASGITransport`, its lifespan run for real, against a real Triton."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest

from gateway.settings import GatewaySettings
from rerank_engine.scoring import Pair
from tests import stack
from tests.app.conftest import in_process

pytestmark = pytest.mark.anyio




async def test_rerank_scores_like_the_engine(api, repository, models_dir):
    pair = Pair("what is a panda?", "The giant panda is a bear native to China.")
    response = await api.post("/rerank", json={"query": pair.query, "document": pair.document})
    assert response.status_code == 200
    expected = stack.engine_scorer(repository, models_dir, "minilm-l6").score([pair]).score[0]
    assert response.json()["score"] == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "   ", "document": "x"}, "query"),
        ({"query": "", "document": "x"}, "query"),
        ({"document": "x"}, "query"),
        ({"query": "q"}, "document"),
        ({"query": "q", "document": 3}, "document"),
        ({"query": "q", "document": "d", "surprise": 1}, "surprise"),
    ],
)
async def test_bad_rerank_bodies_get_422_naming_the_field(api, body, field):
    response = await api.post("/rerank", json=body)
    assert response.status_code == 422
    assert response.json()["error_type"] == "invalid_request"
    assert response.json()["field"] == field
    assert field in response.json()["error"]


async def test_unknown_model_is_400_listing_valid_names(api):
    response = await api.post("/switch_model", json={"model_name": "gpt-5"})
    assert response.status_code == 400
    message = response.json()["error"]
    for name in ("bge", "qwen4b", "qwen8b", "minilm", "bge-reranker-base", "qwen3-reranker-8b"):
        assert name in message


async def test_failed_load_keeps_the_previous_model_serving(api, models_dir):
    before = await api.post("/rerank", json={"query": "q", "document": "d"})
    response = await api.post("/switch_model", json={"model_name": "missing-weights"})
    assert response.status_code == 503
    body = response.json()
    assert body["error_type"] == "model_load_failed"
    assert str(models_dir / "does-not-exist") in body["error"]
    assert "reranker weights bge" in body["error"]  # how to get the weights
    assert "At:" not in body["error"]  # no Python traceback leaks into the API
    models = (await api.get("/models")).json()
    assert models["active"] == "minilm-l6"
    after = await api.post("/rerank", json={"query": "q", "document": "d"})
    assert after.status_code == 200 and after.json() == before.json()



async def test_a_failed_load_leaves_the_triton_server_ready(triton):
    """Kubernetes takes a Triton pod out of its Service while /v2/health/ready fails. With Triton's
    default strict readiness a model without weights kept the server unready until unloaded, and
    so would a switch for the whole of a load; `reranker triton` turns that off."""
    async with httpx.AsyncClient(base_url=triton.url(), timeout=120) as http:
        assert (await http.get("/v2/health/ready")).status_code == 200
        try:
            failed = await http.post("/v2/repository/models/missing-weights/load")
            assert failed.status_code == 400 and "does-not-exist" in failed.text
            states = {m["name"]: m.get("state") for m in (await http.post("/v2/repository/index")).json()}
            assert states["missing-weights"] == "UNAVAILABLE"  # the state that failed strict readiness
            assert (await http.get("/v2/health/ready")).status_code == 200
        finally:
            await http.post("/v2/repository/models/missing-weights/unload")

async def test_models_and_health(api):
    models = (await api.get("/models")).json()
    assert {"bge-reranker-base", "qwen3-reranker-4b", "qwen3-reranker-8b", "minilm-l6"} <= set(models["available"])
    assert models["aliases"]["bge"] == "bge-reranker-base"
    assert models["active"] == "minilm-l6" and "minilm-l6" in models["loaded"]
    health = await api.get("/health")
    assert health.status_code == 200 and health.json() == {
        "status": "ok", "triton_live": True, "active_model": "minilm-l6"
    }
    assert (await api.get("/health/ready")).status_code == 200


async def test_openapi_documents_every_route_with_examples(api):
    spec = (await api.get("/openapi.json")).json()
    assert {"/rerank", "/switch_model", "/models", "/health", "/health/ready", "/v1/rerank", "/v2/rerank",
            "/v1/score"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert schemas["RerankRequest"]["examples"][0]["documents"]
    assert schemas["ScoreRequest"]["examples"][0]["text_2"]
    assert schemas["RerankPairRequest"]["examples"][0]["query"]
    assert schemas["SwitchModelRequest"]["examples"] == [{"model_name": "bge"}]


async def test_gateway_without_triton_starts_and_reports_unavailable():
    (port,) = stack.free_ports(1)
    async with in_process(GatewaySettings(triton_url=f"127.0.0.1:{port}", triton_startup_timeout_s=0)) as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "unavailable"
        assert (await client.get("/health/ready")).status_code == 503
        response = await client.post("/rerank", json={"query": "q", "document": "d"})
        assert response.status_code == 503 and response.json()["error_type"] == "no_active_model"


def test_gateway_and_client_never_import_torch():
    code = "import sys, gateway.app, client, launcher.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture
async def strict_api():
    """A gateway with small limits and no Triton: the guards answer before any model is needed."""
    (port,) = stack.free_ports(1)
    settings = GatewaySettings(triton_url=f"127.0.0.1:{port}", triton_startup_timeout_s=0, max_request_bytes=4096,
                               max_documents_per_request=3)
    async with in_process(settings) as client:
        yield client


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b'{"query": "q\xff", "document": "d"}', JSON, 400, "error parsing the body"),
        (b'{"query": ', JSON, 422, "body: invalid JSON at character"),
        (b'{"query": "q", "document": "d"}', {"content-type": "text/plain"}, 415, "content-type must be application/json"),
        (b'{"query": "q", "document": "d"}', {}, 415, "content-type must be application/json"),
        (b'{"query": "q", "document": "' + b"x" * 5000 + b'"}', JSON, 413, "over the 4096-byte limit"),
    ],
)
async def test_unreadable_bodies_get_4xx_in_the_error_shape(strict_api, content, headers, status, message):
    response = await strict_api.post("/rerank", content=content, headers=headers)
    assert response.status_code == status
    assert message in response.json()["error"] and response.json()["field"] == "body"


async def test_a_chunked_body_over_the_limit_is_refused(strict_api):
    async def chunks():
        yield b'{"query": "q", "document": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    response = await strict_api.post("/rerank", content=chunks(), headers=JSON)
    assert response.status_code == 413 and "4096-byte limit" in response.json()["error"]


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/rerank", {"query": "q", "documents": ["a", "b", "c", "d"]}),
    ("/v1/score", {"text_1": "q", "text_2": ["a", "b", "c", "d"]}),
])
async def test_too_many_documents_name_the_limit(strict_api, path, body):
    response = await strict_api.post(path, json=body)
    assert response.status_code == 422
    assert response.json()["field"] == "documents" and "4 items, over the limit of 3" in response.json()["error"]


async def test_lone_surrogates_are_cleaned_and_nul_bytes_scored(api):
    lone = await api.post("/rerank", content=b'{"query": "pandas \\ud800", "document": "bamboo \\udfff"}', headers=JSON)
    cleaned = await api.post("/rerank", json={"query": "pandas \ufffd", "document": "bamboo \ufffd"})
    assert lone.status_code == 200 and lone.json() == cleaned.json()
    for text in ("nul\x00byte", "emoji 🐼🎋 and 中文, العربية, हिन्दी, ไทย"):
        response = await api.post("/v1/rerank", json={"query": text, "documents": [text, "other"]})
        assert response.status_code == 200 and response.json()["results"][0]["index"] == 0


@pytest.mark.slow
async def test_requests_beyond_the_in_flight_bound_get_429(triton):
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm",
                               max_concurrent_requests=1)
    async with in_process(settings) as client:
        slow = asyncio.create_task(client.post("/rerank", json={"query": "q", "document": "word " * 2_000_000}))
        await asyncio.sleep(2)  # the 10 MB request (about 10 s of scoring) is now in flight
        refused = await client.post("/rerank", json={"query": "q", "document": "d"})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error_type"] == "overloaded" and "in flight" in refused.json()["error"]
        assert (await slow).status_code == 200  # nothing in flight was lost
        assert (await client.post("/rerank", json={"query": "q", "document": "d"})).status_code == 200
