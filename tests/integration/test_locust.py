"""The locust scenarios of locustfiles/, each run headless for a few seconds
against the real Triton and gateway on CPU with the tiny models: every
request must succeed, and the gateway's timing headers must show up as the
custom "timing" rows of locust's stats.

locust monkey-patches the process with gevent, so it only ever runs here as
a subprocess; its verdict is read back from the CSV stats it writes.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import stack

pytestmark = pytest.mark.integration

LOCUSTFILES = stack.REPO_ROOT / "locustfiles"
EVAL_DATA = stack.REPO_ROOT.parent / "shared" / "data" / "eval"
TIMING_ROWS = {"x-total-time", "x-queue-time", "x-inference-time"}

needs_eval_data = pytest.mark.skipif(
    not any(EVAL_DATA.glob("*.jsonl")),
    reason=f"no eval corpus at {EVAL_DATA} (the corpus scenarios read ../shared/data/eval/*.jsonl)",
)


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    process = stack.start_gateway(triton.ports["grpc"], tmp_path_factory.mktemp("gw") / "gateway.log")
    yield process
    # The session's Triton outlives this module: leave minilm active and loaded, as the gateway found it.
    httpx.post(f"{process.url()}/switch_model", json={"model_name": "minilm"}, timeout=300)
    stack.stop(process.process)


def run_locust(gateway, tmp_path: Path, locustfile: str, *args: str, run_time_s: int) -> dict[tuple[str, str], dict]:
    """Run one scenario headless; return its stats rows keyed by (Type, Name)."""
    prefix = tmp_path / Path(locustfile).stem
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILES / locustfile), "--headless", "--only-summary",
        "-u", "20", "-r", "20", "-t", f"{run_time_s}s", "--host", gateway.url(), "--csv", str(prefix), *args,
    ]
    result = subprocess.run(command, cwd=stack.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=run_time_s + 60)
    output = result.stdout
    print(output[-6000:])  # locust's summary table, shown with -s or on failure
    stats = prefix.with_name(prefix.name + "_stats.csv")
    assert stats.exists(), f"locust wrote no stats (exit {result.returncode}):\n{output[-4000:]}"
    with stats.open(newline="") as handle:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}
    failures = prefix.with_name(prefix.name + "_failures.csv").read_text()
    aggregated = rows[("", "Aggregated")]
    assert int(aggregated["Failure Count"]) == 0, f"failures:\n{failures}\n{output[-4000:]}"
    assert int(aggregated["Request Count"]) > 0
    assert result.returncode == 0, output[-4000:]
    timing = {name for kind, name in rows if kind == "timing"}
    assert timing == TIMING_ROWS, f"timing rows: {timing}"
    for name in TIMING_ROWS:
        assert int(rows[("timing", name)]["Request Count"]) > 0
    return rows


def requests_of(rows: dict, name_prefix: str) -> int:
    return sum(int(row["Request Count"]) for (kind, name), row in rows.items()
               if kind == "POST" and name.startswith(name_prefix))


def test_seed_pairs_stops_at_the_request_cap(gateway, tmp_path):
    rows = run_locust(gateway, tmp_path, "seed_pairs.py", "--max-requests", "300", run_time_s=120)
    assert requests_of(rows, "/rerank") == 300  # exactly the cap, not one per user more
    assert int(rows[("timing", "x-inference-time")]["Request Count"]) == 300


@needs_eval_data
def test_rerank_corpus(gateway, tmp_path):
    rows = run_locust(gateway, tmp_path, "rerank_corpus.py", "--documents", "4", "--max-requests", "40",
                      run_time_s=120)
    assert requests_of(rows, "/v1/rerank (4 docs)") == 40


@needs_eval_data
def test_mixed_traffic_survives_switches_there_and_back(gateway, tmp_path):
    rows = run_locust(gateway, tmp_path, "mixed_switch.py", "--documents", "3", "--switch-models", "minilm,bge",
                      "--switch-interval", "1", "--switches", "2", run_time_s=240)
    # The gateway starts on minilm, so the switch user goes to bge and back.
    assert int(rows[("POST", "/switch_model bge")]["Request Count"]) == 1
    assert int(rows[("POST", "/switch_model minilm")]["Request Count"]) == 1
    assert requests_of(rows, "/rerank") > 0
    served = {name for kind, name in rows if kind == "POST" and name.startswith("/v1/rerank")}
    assert {"/v1/rerank (3 docs) [minilm-l6]", "/v1/rerank (3 docs) [bge-reranker-base]"} <= served, served
