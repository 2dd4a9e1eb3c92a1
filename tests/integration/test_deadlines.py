"""Per-request deadlines: a request Triton cannot finish in time gets a 504
naming the limit, and work still queued in Triton when its deadline passes is
dropped there instead of being computed for nobody."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import stack

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

TIMEOUT_S = 0.5
REQUESTS = 24
DOCUMENTS = 200


def pairs_computed(triton, model: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{triton.ports['metrics']}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "reranker_model_pairs_total" and sample.labels.get("model") == model:
                return sample.value
    return 0.0


async def test_overdue_requests_get_504_and_are_dropped_in_triton(triton, tmp_path):
    env = {"RERANKER_REQUEST_TIMEOUT_S": str(TIMEOUT_S)}
    gateway = stack.start_gateway(triton.ports["grpc"], tmp_path / "gateway.log", model="bge", env=env)
    try:
        before = pairs_computed(triton, "bge-reranker-base")
        documents = [f"document {i} " + "long text about many things " * 60 for i in range(DOCUMENTS)]
        body = {"query": "which document is relevant?", "documents": documents}
        async with httpx.AsyncClient(base_url=gateway.url(), timeout=60) as client:
            responses = await asyncio.gather(*(client.post("/v1/rerank", json=body) for _ in range(REQUESTS)))
            statuses = [r.status_code for r in responses]
            assert set(statuses) <= {200, 504}, statuses
            late = [r.json() for r in responses if r.status_code == 504]
            assert late, "the load should outlast a 0.5 s deadline on 2 CPU cores"
            assert all(body["error_type"] == "backend_timeout" for body in late)
            assert all("RERANKER_REQUEST_TIMEOUT_S" in body["error"] for body in late)
            await asyncio.sleep(3)  # let Triton finish what it had started
            computed = pairs_computed(triton, "bge-reranker-base") - before
            # Every 200 was computed; of the 504s, those still queued at their deadline were not.
            assert computed < REQUESTS * DOCUMENTS, "Triton computed every overdue request"
            assert computed >= statuses.count(200) * DOCUMENTS
            after = await client.post("/v1/rerank", json={"query": "q", "documents": ["d"]})
            assert after.status_code == 200
    finally:
        stack.stop(gateway.process)
