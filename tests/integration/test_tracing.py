"""`reranker serve` as a user runs it, with tracing on and API keys: Triton
listens on loopback only, and a real OTLP/HTTP receiver (a separate process,
tests/otlp_receiver.py) gets the gateway's spans and Triton's own, linked into
one trace through the traceparent the gateway sends in the gRPC metadata; the
gateway's log line for the request carries the trace id, never the key."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from launcher.process import free_ports
from tests import stack
from tests.otlp_receiver import read_spans

pytestmark = pytest.mark.integration

KEY = "sk-trace-test-8f14e45fceea167a5a36dedd4bea2543"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    out = tmp_path_factory.mktemp("otlp") / "spans.jsonl"
    (port,) = free_ports(1)
    process = subprocess.Popen([sys.executable, "-m", "tests.otlp_receiver", f"--port={port}", f"--out={out}"],
                               cwd=stack.REPO_ROOT, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.post(f"http://127.0.0.1:{port}/", content=b"", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline and process.poll() is None, "the OTLP receiver did not start"
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}", out
    stack.stop(process)


@pytest.fixture(scope="module")
def served(repository, models_dir, receiver, tmp_path_factory):
    endpoint, _ = receiver
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        "RERANKER_API_KEYS": f"{KEY} score tracing-test",
        "RERANKER_OTLP_ENDPOINT": endpoint,
        "RERANKER_TRITON_TRACE_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the SDK's export interval, so the test need not wait 5 s
    }
    serve = stack.start_serve(repository, models_dir, log, env=env)
    yield serve
    stack.stop(serve.process)


def wait_for_spans(out, want, timeout_s: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = read_spans(out)
        if want(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.25)


def test_triton_listens_on_loopback_only(served):
    servers = [p for p in psutil.Process(served.process.pid).children(recursive=True) if p.name() == "tritonserver"]
    assert servers, "no tritonserver under reranker serve"
    listening = {(c.laddr.ip, c.laddr.port) for c in servers[0].net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN}
    assert len(listening) == 3, listening  # HTTP, gRPC, metrics
    for ip, port in listening:
        address = ipaddress.ip_address(ip)
        address = getattr(address, "ipv4_mapped", None) or address  # gRPC listens on ::ffff:127.0.0.1
        assert address.is_loopback, f"Triton listens on {ip}:{port}"
    assert served.ports["triton_http"] in {port for _, port in listening}


def test_gateway_and_triton_spans_form_one_trace(served, receiver):
    _, out = receiver
    response = httpx.post(f"{served.url()}/v1/rerank", headers={"authorization": f"Bearer {KEY}"},
                          json={"query": "what do pandas eat?", "documents": ["bamboo", "Paris", "tea"]}, timeout=60)
    assert response.status_code == 200
    trace_id = response.headers["trace-id"]

    def complete(spans):
        ours = [s for s in spans if s["trace_id"] == trace_id]
        return any(s["service"] == "triton" for s in ours) and any(s["kind"] == "SERVER" for s in ours)

    spans = [s for s in wait_for_spans(out, complete) if s["trace_id"] == trace_id]
    gateway = {s["name"]: s for s in spans if s["service"] == "reranker-gateway"}
    triton = [s for s in spans if s["service"] == "triton"]
    assert {"POST /v1/rerank", "fastapi.dependencies", "fastapi.endpoint", "model lease", MODEL_INFER} <= set(gateway)
    server, endpoint, infer = gateway["POST /v1/rerank"], gateway["fastapi.endpoint"], gateway[MODEL_INFER]
    assert server["parent_span_id"] is None and server["kind"] == "SERVER"
    assert server["attributes"]["reranker.documents"] == 3 and server["attributes"]["reranker.model"] == "minilm-l6"
    assert endpoint["parent_span_id"] == server["span_id"] and infer["parent_span_id"] == endpoint["span_id"]
    assert triton, f"no Triton spans in the trace; got {[(s['service'], s['name']) for s in spans]}"
    ids = {s["span_id"] for s in triton}
    roots = [s for s in triton if s["parent_span_id"] not in ids]
    assert [s["parent_span_id"] for s in roots] == [infer["span_id"]], roots  # Triton's spans hang off the call
    assert any(s["attributes"].get("triton.model_name") == "minilm-l6" for s in triton) or any(
        "minilm-l6" in s["name"] for s in triton), triton


def test_the_log_line_has_the_trace_id_and_no_key(served):
    response = httpx.post(f"{served.url()}/rerank", headers={"authorization": f"Bearer {KEY}"},
                          json={"query": "q", "document": "d"}, timeout=60)
    assert response.status_code == 200
    refused = httpx.post(f"{served.url()}/rerank", headers={"authorization": f"Bearer {KEY}-wrong"},
                         json={"query": "q", "document": "d"}, timeout=60)
    assert refused.status_code == 401
    time.sleep(0.5)
    log = served.log.read_text()
    (line,) = [line for line in log.splitlines() if f"trace_id={response.headers['trace-id']}" in line]
    assert "POST /rerank 200" in line and "key=tracing-test" in line
    (refusal,) = [line for line in log.splitlines() if f"trace_id={refused.headers['trace-id']}" in line]
    assert "401" in refusal and "error=invalid_api_key" in refusal
    assert KEY not in log
