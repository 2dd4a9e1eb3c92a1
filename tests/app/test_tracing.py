"""Traces of the in-process gateway (real Triton), seen by the OpenTelemetry
SDK's in-memory exporter: which spans a request makes, how they nest, what
the request span carries, and the trace id in the response; with tracing off,
the trace id still correlates the response and the log."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.settings import GatewaySettings
from tests.app.conftest import in_process

pytestmark = pytest.mark.anyio

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
async def traced(triton):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm")
    async with in_process(settings, tracer_provider=provider) as client:
        exporter.clear()  # the start-up switch's spans are not this test's
        yield client, exporter


def by_name(spans) -> dict:
    found = {}
    for span in spans:
        found.setdefault(span.name, []).append(span)
    return found


def parent_of(span) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_rerank_request_is_one_trace_with_nested_spans(traced):
    client, exporter = traced
    documents = ["Giant pandas eat bamboo.", "The Eiffel tower is in Paris.", "Bears hibernate in winter."]
    response = await client.post("/v1/rerank", json={"query": "what do pandas eat?", "documents": documents},
                                 headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    assert response.headers["trace-id"] == CALLER_TRACE  # the caller's trace goes on
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {CALLER_TRACE}
    named = by_name(spans)
    (server,) = named["POST /v1/rerank"]
    assert server.kind is SpanKind.SERVER and parent_of(server) == int(CALLER_SPAN, 16)
    attributes = dict(server.attributes)
    assert attributes["http.route"] == "/v1/rerank" and attributes["http.response.status_code"] == 200
    assert attributes["reranker.model"] == "minilm-l6" and attributes["reranker.documents"] == 3
    assert attributes["reranker.tokens"] == response.json()["usage"]["total_tokens"]
    assert attributes["reranker.truncated_documents"] == 0 and attributes["reranker.status"] == "ok"
    (validation,) = named["fastapi.dependencies"]  # parameters and the body, validated
    (endpoint,) = named["fastapi.endpoint"]
    assert parent_of(validation) == parent_of(endpoint) == server.context.span_id
    assert validation.end_time <= endpoint.start_time
    (lease,) = named["model lease"]
    assert parent_of(lease) == endpoint.context.span_id and lease.attributes["reranker.model"] == "minilm-l6"
    (infer,) = named[MODEL_INFER]  # three documents: one Triton call
    assert infer.kind is SpanKind.CLIENT and parent_of(infer) == endpoint.context.span_id
    assert lease.end_time <= infer.start_time and infer.end_time <= endpoint.end_time <= server.end_time
    assert infer.attributes["rpc.system"] == "grpc"


async def test_a_large_request_makes_one_triton_span_per_chunk(traced):
    client, exporter = traced
    documents = [f"document number {i}" for i in range(300)]  # minilm's max_batch_size is 256: two chunks
    response = await client.post("/v1/rerank", json={"query": "q", "documents": documents})
    assert response.status_code == 200
    named = by_name(exporter.get_finished_spans())
    (endpoint,) = named["fastapi.endpoint"]
    assert [parent_of(s) for s in named[MODEL_INFER]] == [endpoint.context.span_id] * 2
    assert response.headers["trace-id"] == format(endpoint.context.trace_id, "032x")


async def test_a_refused_request_is_traced_with_its_reason_and_nothing_else_is(traced):
    client, exporter = traced
    response = await client.post("/v1/rerank", json={"query": " ", "documents": ["x"]})
    assert response.status_code == 422
    await asyncio.sleep(1.5)  # the liveness watcher polls Triton meanwhile: those calls make no spans
    spans = exporter.get_finished_spans()
    (server,) = by_name(spans)["POST /v1/rerank"]
    assert server.attributes["reranker.status"] == "invalid_request"
    assert server.attributes["http.response.status_code"] == 422
    assert MODEL_INFER not in by_name(spans)
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    assert (await client.get("/health")).status_code == 200
    assert len(exporter.get_finished_spans()) == len(spans)  # probes are not traced


async def test_a_switch_traces_its_lock_wait_and_load(traced):
    client, exporter = traced
    response = await client.post("/switch_model", json={"model_name": "minilm"})
    assert response.status_code == 200
    named = by_name(exporter.get_finished_spans())
    (server,) = named["POST /switch_model"]
    (wait,) = named["switch lock wait"]
    assert wait.context.trace_id == server.context.trace_id and wait.attributes["reranker.model"] == "minilm-l6"


async def test_without_tracing_the_trace_id_still_ties_the_response_to_its_log_line(api, caplog):
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        given = await api.post("/rerank", json={"query": "q", "document": "d"}, headers={"traceparent": TRACEPARENT})
        first = await api.post("/rerank", json={"query": "q", "document": "d"})
        second = await api.post("/rerank", json={"query": "q", "document": "d"})
    assert given.headers["trace-id"] == CALLER_TRACE
    ids = [first.headers["trace-id"], second.headers["trace-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.access"]
    for trace_id in (CALLER_TRACE, *ids):
        (line,) = [line for line in lines if f"trace_id={trace_id}" in line]
        assert "POST /rerank 200" in line and "model=minilm-l6 documents=1" in line
