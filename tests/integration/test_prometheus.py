"""The Grafana dashboard's queries, evaluated by a real Prometheus (Debian's
`prometheus`) scraping a live gateway and Triton with the shipped scrape config:
each query must be valid PromQL and, unless it needs a GPU, return series after
real traffic, refusals and a switch. `promtool` checks the shipped file as it is.

Grafana itself is not run (there is no Docker engine or Grafana package here);
its panels are these queries."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests import stack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO_ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARD = REPO_ROOT / "deploy/grafana/dashboards/reranker.json"
# Triton exports these only where it sees a GPU; their queries must still parse.
GPU_ONLY = ("nv_gpu_", "reranker_model_gpu_")
TRAFFIC_S = 8


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus (./run.sh test installs it)")
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]
    return queries + [(f"annotation {a['name']}", a["expr"]) for a in dashboard["annotations"]["list"]]


def loopback_config(gateway_port: int, triton_metrics_port: int) -> dict:
    """The shipped scrape config with its compose host names swapped for loopback ports, scraping every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    targets = {"gateway": gateway_port, "triton": triton_metrics_port}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets.pop(job['job_name'])}"]}]
    assert not targets, f"the shipped config has no job for {sorted(targets)}"
    return config


def query(url: str, expr: str) -> dict:
    return httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()


def wait_for_targets(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        if targets and all(t["health"] == "up" for t in targets):
            return
        time.sleep(0.5)
    raise TimeoutError(f"Prometheus targets not up: {[(t['scrapeUrl'], t['lastError']) for t in targets]}")


def score_for(gateway: str, seconds: float) -> None:
    """Scoring on two routes, and a refusal every fourth round."""
    started, rounds = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        body = {"query": "what do pandas eat?", "documents": ["Pandas eat bamboo.", "Paris is in France."]}
        assert httpx.post(f"{gateway}/v1/rerank", json=body, timeout=60).status_code == 200
        assert httpx.post(f"{gateway}/rerank", json={"query": "q", "document": "d"}, timeout=60).status_code == 200
        if rounds % 4 == 0:
            assert httpx.post(f"{gateway}/v1/rerank", json={"query": " ", "documents": ["d"]}).status_code == 422
        rounds += 1
        time.sleep(0.1)


@pytest.fixture(scope="module")
def prometheus(triton, tmp_path_factory):
    """Prometheus scraping a fresh gateway and the session's Triton, after scoring, refusals and a switch."""
    folder = tmp_path_factory.mktemp("prometheus")
    gateway = stack.start_gateway(triton.ports["grpc"], folder / "gateway.log")
    config = folder / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(gateway.ports["http"], triton.ports["metrics"])))
    (port,) = stack.free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log = folder / "prometheus.log"
    process = subprocess.Popen(
        [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        stack.wait_for(f"{url}/-/ready", process, log, timeout_s=60)
        wait_for_targets(url, process)
        time.sleep(2)  # a scrape or two before the traffic, so every counter has a baseline
        score_for(gateway.url(), TRAFFIC_S / 2)
        switch = httpx.post(f"{gateway.url()}/switch_model", json={"model_name": "bge"}, timeout=300)
        assert switch.status_code == 200, switch.text
        score_for(gateway.url(), TRAFFIC_S / 2)
        time.sleep(2)  # and a scrape or two after it
        yield url
    finally:
        stack.stop(process)
        stack.stop(gateway.process)


def test_promtool_accepts_the_shipped_scrape_config():
    result = subprocess.run([binary("promtool"), "check", "config", str(SCRAPE_CONFIG)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_query_is_valid_promql_and_returns_series(prometheus):
    queries = dashboard_queries()
    assert len(queries) > 20
    empty = []
    for title, expr in queries:
        answer = query(prometheus, expr)
        assert answer["status"] == "success", f"{title}: {expr}: {answer.get('error')}"
        if not answer["data"]["result"] and not any(name in expr for name in GPU_ONLY):
            empty.append(f"{title}: {expr}")
    assert empty == [], "queries with no series after the traffic:\n" + "\n".join(empty)


def test_the_switch_shows_as_an_annotation_and_in_the_switch_panel(prometheus):
    # The switch ended about 6 s before these queries: inside the annotation's 15 s window.
    (annotation,) = [expr for title, expr in dashboard_queries() if title.startswith("annotation")]
    result = query(prometheus, annotation)["data"]["result"]
    assert {r["metric"]["model"] for r in result} == {"bge-reranker-base"}
    increases = query(prometheus, 'sum by (model) (increase(reranker_model_switches_total{outcome="ok"}[1m]))')
    by_model = {r["metric"]["model"]: float(r["value"][1]) for r in increases["data"]["result"]}
    assert by_model["bge-reranker-base"] > 0.5  # increase() extrapolates; one switch reads as about 1
