"""What schemathesis found the gateway doing outside its documented contract,
now fixed: a POST to a path or method no route takes got the body guards'
415 instead of the router's 404 or 405, and values of the wrong JSON type
(0 for a boolean, "2" for an integer) were coerced instead of refused."""

from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from tests import stack
from tests.app.conftest import in_process

pytestmark = pytest.mark.anyio


@pytest.fixture
async def no_triton_api():
    """A gateway without Triton: everything here is answered before a model is needed."""
    (port,) = stack.free_ports(1)
    async with in_process(GatewaySettings(triton_url=f"127.0.0.1:{port}", triton_startup_timeout_s=0)) as client:
        yield client


@pytest.mark.parametrize("headers", [{}, {"content-type": "text/plain"}, {"content-type": "application/json"}])
async def test_post_to_a_get_route_is_405_with_allow(no_triton_api, headers):
    response = await no_triton_api.post("/models", content=b"x", headers=headers)
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json()["error_type"] == "invalid_request" and response.json()["error"] == "Method Not Allowed"


async def test_post_to_an_unknown_path_is_404(no_triton_api):
    response = await no_triton_api.post("/no-such-path", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 404 and response.json()["error"] == "Not Found"


async def test_routed_posts_are_still_guarded(no_triton_api):
    response = await no_triton_api.post("/v1/rerank", content=b"{}", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.json()["field"] == "body"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/switch_model", {"model_name": "bge", "keep_loaded": 0}, "keep_loaded"),
        ("/switch_model", {"model_name": "bge", "keep_loaded": "yes"}, "keep_loaded"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": "2"}, "top_n"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": True}, "top_n"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "return_documents": 1}, "return_documents"),
        ("/v1/rerank", {"query": "q", "documents": ["d"], "max_tokens_per_doc": 2.0}, "max_tokens_per_doc"),
        ("/v1/score", {"text_1": "q", "text_2": "d", "truncate": "false"}, "truncate"),
    ],
)
async def test_values_of_the_wrong_json_type_are_refused(no_triton_api, path, body, field):
    response = await no_triton_api.post(path, json=body)
    assert response.status_code == 422, response.json()
    assert response.json()["field"] == field


async def test_documents_as_objects_still_validate(no_triton_api):
    # Strict mode still builds {"text": ...} objects from JSON; the 503 is for the missing Triton.
    response = await no_triton_api.post("/v1/rerank", json={"query": "q", "documents": [{"text": "d", "id": 7}]})
    assert response.status_code == 503 and response.json()["error_type"] == "no_active_model"
