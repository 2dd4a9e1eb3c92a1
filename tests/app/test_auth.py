"""API keys on the in-process gateway (real Triton): every route of the app
against no key, a wrong key, and keys of each scope; the refusals' shape,
headers and metrics; what stays open; the start-up warning."""

from __future__ import annotations

import logging

import pytest

from gateway.api import auth
from gateway.app import create_app
from gateway.api.auth import Scope
from gateway.settings import GatewaySettings
from tests.app.conftest import in_process
from tests.app.test_metrics import samples, value

pytestmark = pytest.mark.anyio

KEYS = {
    "score": "sk-score-5d41402abc4b2a76b9719d911017c592",
    "admin": "sk-admin-7d793037a0760186574b0282f2f435e7",
    "metrics": "sk-prom-0cc175b9c0f1b6a831c399e269772661",
}
KEYS_SETTING = "; ".join(f"{secret} {scope} {scope}-client" for scope, secret in KEYS.items())
WRONG = "sk-wrong-00000000000000000000000000000000"
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def settings(triton, **extra) -> GatewaySettings:
    return GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm",
                           api_keys=KEYS_SETTING, **extra)


@pytest.fixture
async def keyed(triton):
    async with in_process(settings(triton)) as client:
        yield client


def every_route():
    """(method, path, scope the route declares) of the app as built, so routes added later are covered."""
    app = create_app(GatewaySettings())
    return sorted((method, matched.path, auth.declared_scope(declared))
                  for matched, declared in auth.flat_routes(app.routes)
                  for method in (getattr(matched, "methods", None) or {"GET"})  # a Mount (static files) has none
                  if method != "HEAD")


def allowed(scope: Scope | None, key: str | None, metrics_require_key: bool = False) -> bool:
    if scope is None or (scope is Scope.METRICS and not metrics_require_key):
        return True
    return key is not None and (key == "admin" or key == scope.value)


async def call(client, method: str, path: str, secret: str | None):
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    # An empty JSON object: a route that lets the request through answers 422 without scoring or switching.
    body = {"json": {}} if method == "POST" else {}
    return await client.request(method, path, headers=headers, **body)


def assert_refused(response, status: int, error_type: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error_type"] == error_type and body["error"] == body["detail"] and set(body) <= {"error", "error_type", "field", "detail"}
    assert response.headers["www-authenticate"].startswith('Bearer realm="reranker"')
    assert "trace-id" in response.headers and "x-total-time" in response.headers


async def test_every_route_with_no_key_a_wrong_key_and_each_scope(keyed):
    routes = every_route()
    assert len(routes) >= 12
    for method, path, scope in routes:
        for key in (None, "wrong", "score", "admin", "metrics"):
            secret = WRONG if key == "wrong" else KEYS.get(key)
            response = await call(keyed, method, path, secret)
            label = f"{method} {path} with {key} key"
            if allowed(scope, None):
                assert response.status_code not in (401, 403), label  # public: any key or none is fine
            elif key is None:
                assert_refused(response, 401, "missing_api_key")
            elif key == "wrong":
                assert_refused(response, 401, "invalid_api_key")
                assert 'error="invalid_token"' in response.headers["www-authenticate"]
            elif allowed(scope, key):
                assert response.status_code not in (401, 403), label
                assert response.status_code < 500, f"{label}: {response.text}"
            else:
                assert_refused(response, 403, "insufficient_scope")
                assert f'scope="{scope.value}"' in response.headers["www-authenticate"]
                assert scope.value in response.json()["error"]


async def test_refusals_are_counted_by_reason(keyed):
    before = await samples(keyed)
    await call(keyed, "POST", "/v1/rerank", None)
    await call(keyed, "POST", "/v1/rerank", WRONG)
    await call(keyed, "POST", "/switch_model", KEYS["score"])
    after = await samples(keyed)
    for reason in ("missing_api_key", "invalid_api_key", "insufficient_scope"):
        name = "reranker_rejections_total"
        assert value(after, name, reason=reason) - value(before, name, reason=reason) == 1, reason


async def test_a_request_without_a_key_is_refused_before_its_body_is_read(keyed):
    huge = b"[" * (65 * 2**20)  # over the body limit, and not JSON: 413 or 422 if anything read it
    response = await keyed.post("/v1/rerank", content=huge, headers={"content-type": "application/json"})
    assert_refused(response, 401, "missing_api_key")
    refused = await keyed.post("/v1/rerank", content=b"{}", headers={"content-type": "text/plain"})
    assert refused.status_code == 401  # not 415: who asks comes first


async def test_scoring_with_a_key_works_and_the_scheme_is_case_insensitive(keyed):
    body = {"query": "what do pandas eat?", "documents": ["bamboo", "the Eiffel tower"]}
    response = await keyed.post("/v1/rerank", json=body, headers={"authorization": f"bearer {KEYS['score']}"})
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    basic = await keyed.post("/v1/rerank", json=body, headers={"authorization": f"Basic {KEYS['score']}"})
    assert basic.status_code == 401 and basic.json()["error_type"] == "missing_api_key"


async def test_metrics_can_require_a_key(triton):
    async with in_process(settings(triton, metrics_require_key=True)) as client:
        assert_refused(await client.get("/metrics"), 401, "missing_api_key")
        assert_refused(await call(client, "GET", "/metrics", KEYS["score"]), 403, "insufficient_scope")
        for key in ("metrics", "admin"):
            assert (await call(client, "GET", "/metrics", KEYS[key])).status_code == 200, key
        assert (await client.get("/health")).status_code == 200


async def test_the_openapi_document_says_which_key_each_operation_needs(keyed):
    schema = (await keyed.get("/openapi.json")).json()  # public: the fuzz tests and clients read it
    assert schema["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["apiKey"]["description"]}
    switch = schema["paths"]["/switch_model"]["post"]
    assert switch["security"] == [{"apiKey": []}] and {"401", "403"} <= set(switch["responses"])
    assert "`admin` scope" in switch["description"]
    assert "`score` scope" in schema["paths"]["/v1/rerank"]["post"]["description"]
    assert "security" not in schema["paths"]["/health"]["get"]
    assert "security" not in schema["paths"]["/metrics"]["get"]  # open by default


async def test_one_warning_at_start_up_without_keys_and_none_with_them(triton, caplog):
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        async with in_process(GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}",
                                              default_model="minilm")) as client:
            assert (await client.get("/models")).status_code == 200  # open
            await client.get("/health")
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.app" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no API keys configured" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        async with in_process(settings(triton)):
            pass
    assert not [r for r in caplog.records if r.name == "gateway.app" and r.levelno == logging.WARNING]
