"""Request priority through Triton's dynamic batcher, end to end: while bulk
clients (priority +1) saturate a model, interactive single requests
(priority -1) keep their p50 within 2x of the idle server's, and probes at
the bulk clients' own priority show that the queue was saturated. Measured by
the benchmark module itself (bench/priority.py), on a gateway and Triton of
its own processes."""

from __future__ import annotations

import asyncio

import pytest

from bench.priority import run
from tests import stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    # A bulk budget of 8 rows (chunks of 4): on a 2-core CPU a bulk batch must cost about what a single pair
    # does for an interactive request to find it in flight and stay within 2x (README, Request priority).
    process = stack.start_gateway(triton.ports["grpc"], tmp_path_factory.mktemp("priority") / "gateway.log",
                                  model="bge", env={"RERANKER_BULK_ROWS_IN_FLIGHT": "8"})
    yield process
    stack.stop(process.process)


def test_interactive_requests_keep_their_latency_while_bulk_saturates_the_model(gateway):
    result = asyncio.run(run(gateway.url(), None, "bge", concurrency=4, documents=32, probes=25, warmup_s=2.0))
    print("PRIORITY:", result)
    idle = result["idle"]["p50_ms"]
    assert result["bulk_errors"] == 0 and result["bulk_pairs_per_s"] > 0
    assert result["same_priority_under_load"]["p50_ms"] >= 3 * idle, "the bulk load did not saturate the model"
    assert result["interactive_under_load"]["p50_ms"] <= 2 * idle, result
