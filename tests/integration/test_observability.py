"""Metrics and logs while a real Triton serves: the gateway's /metrics, the
models' custom metrics and per-batch JSON log lines on Triton, and the Grafana
dashboard, whose every query must name a metric one of them exports."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import stack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = REPO_ROOT / "deploy/grafana/dashboards/reranker.json"
TRITON_GPU_METRICS = {"nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                      "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"}
CANARY = "zebra-canary-7781"  # document text that must never reach a log


def sample_values(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def exposed_names(url: str) -> set[str]:
    """Sample names as exposed (the parser would add `_total` to Triton's counters)."""
    lines = httpx.get(url, timeout=10).text.splitlines()
    return {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}


def batch_lines(log: Path) -> list[dict]:
    """Triton writes a model's log message as a quoted string; the message is our JSON."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if '\\"event\\":\\"batch\\"' in line or '"event":"batch"' in line:
            message = line.split("] ", 1)[1]
            lines.append(json.loads(json.loads(message) if message.startswith('"') else message))
    return lines


@pytest.fixture(scope="module")
def served(triton, tmp_path_factory):
    """A gateway on the session's Triton, after real traffic: a rerank, a refusal, a switch."""
    log = tmp_path_factory.mktemp("observability") / "gateway.log"
    gateway = stack.start_gateway(triton.ports["grpc"], log)
    try:
        documents = [f"{CANARY} pandas eat bamboo", "Paris is in France", "bears", "tea", "a longer document " * 20]
        response = httpx.post(f"{gateway.url()}/v1/rerank", json={"query": "what do pandas eat?",
                                                                  "documents": documents}, timeout=60)
        assert response.status_code == 200
        assert httpx.post(f"{gateway.url()}/v1/rerank", json={"query": "", "documents": ["x"]}).status_code == 422
        assert httpx.post(f"{gateway.url()}/switch_model", json={"model_name": "bge"}, timeout=300).status_code == 200
        assert httpx.post(f"{gateway.url()}/rerank", json={"query": "q", "document": "d"}, timeout=60).status_code == 200
        # The batch's metrics reach Triton's endpoint through the stub's messages to its parent: wait until they
        # show rather than assume their order against the response.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not value(
                sample_values(f"http://127.0.0.1:{triton.ports['metrics']}/metrics"), "reranker_model_pairs_total",
                model="bge-reranker-base"):
            time.sleep(0.1)
        yield {
            "gateway": sample_values(f"{gateway.url()}/metrics"),
            "triton": sample_values(f"http://127.0.0.1:{triton.ports['metrics']}/metrics"),
            "exposed": exposed_names(f"{gateway.url()}/metrics")
            | exposed_names(f"http://127.0.0.1:{triton.ports['metrics']}/metrics"),
            "usage": response.json()["usage"],
            "documents": len(documents),
        }
    finally:
        stack.stop(gateway.process)


def value(values, name, **labels):
    return values.get((name, frozenset(labels.items())))


def test_gateway_metrics_count_the_traffic(served):
    g = served["gateway"]
    route = {"route": "/v1/rerank", "model": "minilm-l6"}
    assert value(g, "reranker_request_duration_seconds_count", status="200", **route) == 1
    assert value(g, "reranker_request_documents_sum", **route) == served["documents"]
    assert value(g, "reranker_request_tokens_sum", **route) == served["usage"]["total_tokens"]
    assert value(g, "reranker_rejections_total", reason="invalid_request") == 1
    assert value(g, "reranker_active_model", model="bge-reranker-base") == 1
    assert value(g, "reranker_active_model", model="minilm-l6") == 0
    assert value(g, "reranker_model_switches_total", model="bge-reranker-base", outcome="ok") == 1


def test_models_export_their_batch_figures_on_triton(served):
    t = served["triton"]
    minilm = {"model": "minilm-l6"}
    assert value(t, "reranker_model_pairs_total", **minilm) >= served["documents"]
    assert value(t, "reranker_model_batches_total", **minilm) >= 1
    tokens, padded = value(t, "reranker_model_tokens_total", **minilm), value(t, "reranker_model_padded_tokens_total", **minilm)
    assert 0 < tokens <= padded
    assert value(t, "reranker_model_batch_pairs_count", **minilm) >= 1
    assert value(t, "reranker_model_queue_seconds_count", **minilm) >= 1  # the gateway sent its clock
    assert value(t, "reranker_model_gc_seconds_total", **minilm) >= 0
    assert value(t, "reranker_model_pairs_total", model="bge-reranker-base") >= 1


def test_each_batch_leaves_one_json_log_line_without_text(served, triton):
    lines = batch_lines(triton.log)
    ours = [line for line in lines if line["model"] == "minilm-l6" and line["pairs"] == served["documents"]]
    assert ours, f"no batch line for the 5-document request among {lines[-5:]}"
    line = ours[-1]
    assert line["requests"] == 1 and line["rejected"] == 0
    # minilm-l6 is a bi-encoder: it runs the shared query once, usage counts it per pair.
    assert 0 < line["tokens"] < served["usage"]["total_tokens"]
    assert line["padded_tokens"] >= line["tokens"] and 0 <= line["padding_ratio"] < 1
    assert line["compute_ms"] > 0 and line["queue_ms"] is not None and line["queue_ms"] >= 0
    assert {"gpu_memory_bytes", "gpu_peak_bytes", "micro_batches"} <= set(line)
    assert line["gc_ms"] >= 0
    assert CANARY not in triton.log.read_text(errors="replace")


def test_every_dashboard_query_names_an_exported_metric(served):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [a["expr"] for a in dashboard["annotations"]["list"]]
    queried = {name for expr in expressions for name in re.findall(r"\b(?:reranker|nv)_[a-z0-9_]+", expr)}
    assert len(queried) > 15
    exported = served["exposed"]
    # Triton exports its GPU metrics only where it sees a GPU (checked on the H100 run); the
    # names are those of Triton's metrics documentation.
    assert queried - exported <= TRITON_GPU_METRICS
