"""`priority` and `x-request-priority` through the in-process gateway into the
real Triton, whose dynamic batcher takes the levels of the shipped configs."""

from __future__ import annotations

import pytest

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
