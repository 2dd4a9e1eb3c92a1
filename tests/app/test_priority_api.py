"""`priority` and `x-request-priority` through the in-process gateway into the
real Triton, whose dynamic batcher takes the levels of the shipped configs, with
and without the gateway's dispatch window."""

from __future__ import annotations

import pytest

from gateway.settings import GatewaySettings
from tests.app.conftest import in_process

pytestmark = pytest.mark.anyio

BODY = {"query": "what do pandas eat?", "documents": ["bamboo", "the Eiffel tower"]}


async def test_every_priority_scores_the_same(api):
    plain = (await api.post("/v1/rerank", json=BODY)).json()["results"]
    for extra, headers in [({"priority": -1}, {}), ({"priority": 5}, {}), ({}, {"x-request-priority": "-3"}),
                           ({"priority": 1}, {"x-request-priority": "-1"})]:
        response = await api.post("/v1/rerank", json={**BODY, **extra}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["results"] == plain, (extra, headers)
    pair = await api.post("/rerank", json={"query": "q", "document": "d", "priority": -1})
    score = await api.post("/v1/score", json={"text_1": "q", "text_2": ["d"], "priority": 1})
    assert pair.status_code == 200 and score.status_code == 200


BAD = [
    ({**BODY, "priority": "1"}, {}, "priority"),  # strict: a JSON integer
    ({**BODY, "priority": 1.5}, {}, "priority"),
    ({**BODY, "priority": 2**63}, {}, "priority"),  # vLLM's int64 range
    (BODY, {"x-request-priority": "soon"}, "x-request-priority"),
]


async def test_a_bad_priority_is_422_naming_it(api):
    # One app for all the cases: each is refused before Triton is asked.
    for body, headers, field in BAD:
        response = await api.post("/v1/rerank", json=body, headers=headers)
        assert response.status_code == 422 and response.json()["field"] == field, response.text


async def test_the_dispatch_window_scores_what_the_plain_gateway_scores(api, triton):
    # 300 documents are two chunks for minilm-l6 (256 + 44); a chunk over the 2-row window takes all of it,
    # so the second waits in the gateway until the first is answered.
    documents = [f"document {i} about pandas and bamboo" for i in range(300)]
    body = {"query": "what do pandas eat?", "documents": documents, "return_documents": False}
    plain = (await api.post("/v1/rerank", json=body)).json()["results"]
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm",
                               dispatch_window_rows=2)
    async with in_process(settings) as windowed:
        answers = [await windowed.post("/v1/rerank", json={**body, **extra}) for extra in ({}, {"priority": -1})]
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.json()["results"] == plain
