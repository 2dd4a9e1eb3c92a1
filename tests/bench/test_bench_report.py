"""`reranker report`: markdown and PNG plots from a real locust run, from
synthetic locust CSVs written under the installed locust's real header rows
(exact per-level figures), and from a rerank_bench JSON (the headline ratios)."""

from __future__ import annotations

import csv
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from launcher import report
from launcher.cli import main as reranker
from tests.stack import REPO_ROOT

PNG = b"\x89PNG\r\n\x1a\n"


class _FakeGateway(http.server.BaseHTTPRequestHandler):
    """Answers POST /rerank as the gateway does, so locust's seed scenario passes."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"score": 0.5}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def locust_run(tmp_path_factory) -> Path:
    """A real headless locust run (the project's seed scenario) against a stand-in gateway: its CSV prefix."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeGateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prefix = tmp_path_factory.mktemp("locust") / "seed"
    try:
        # A subprocess: importing locust here would monkey-patch this test process with gevent.
        subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(REPO_ROOT / "locustfiles" / "seed_pairs.py"), "--headless",
             "-u", "3", "-r", "3", "-t", "4s", "--csv", str(prefix), "--only-summary",
             "--host", f"http://127.0.0.1:{server.server_address[1]}"],
            check=True, capture_output=True, timeout=120,
        )
    finally:
        server.shutdown()
    return prefix


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle))


def _write(path: Path, header: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, restval="0")
        writer.writeheader()
        writer.writerows(rows)


def _history_row(ts, users, count, failures, avg, p50="N/A", p99="N/A", name="Aggregated", rps="0.0"):
    return {"Timestamp": ts, "User Count": users, "Type": "" if name == "Aggregated" else "POST", "Name": name,
            "Requests/s": rps, "Failures/s": "0.0", "50%": p50, "99%": p99, "Total Request Count": count,
            "Total Failure Count": failures, "Total Average Response Time": avg}


# Level of 10 users: 250 requests from t=100 to t=103 at 20 ms each.
# Level of 20 users: 800 more from t=103 to t=107 at 30 ms each, 5 of them failed.
SYNTHETIC_HISTORY = [
    _history_row(100, 0, 0, 0, 0.0),
    _history_row(101, 10, 50, 0, 20.0, 19, 40),
    _history_row(102, 10, 150, 0, 20.0, 20, 41),
    _history_row(103, 10, 250, 0, 20.0, 20, 42),
    _history_row(104, 20, 450, 1, 5000 / 450 + 200 * 30 / 450, 24, 80),
    _history_row(105, 20, 650, 2, (5000 + 400 * 30) / 650, 26, 90),
    _history_row(106, 20, 850, 4, (5000 + 600 * 30) / 850, 28, 92),
    _history_row(107, 20, 1050, 5, (5000 + 800 * 30) / 1050, 31, 95),
]


@pytest.fixture
def synthetic(locust_run, tmp_path) -> Path:
    """A locust run with known numbers, under the header rows the installed locust writes."""
    prefix = tmp_path / "steps"
    stats_header = _header(Path(f"{locust_run}_stats.csv"))
    _write(Path(f"{prefix}_stats.csv"), stats_header, [
        {"Type": "POST", "Name": "/rerank", "Request Count": 1050, "Failure Count": 5, "Median Response Time": 27,
         "Average Response Time": 27.6, "Max Response Time": 300, "Requests/s": 150.0, "90%": 40, "99%": 95},
        {"Type": "", "Name": "Aggregated", "Request Count": 1050, "Failure Count": 5, "Median Response Time": 27,
         "Average Response Time": 27.6, "Max Response Time": 300, "Requests/s": 150.0, "90%": 40, "99%": 95},
    ])
    _write(Path(f"{prefix}_stats_history.csv"), _header(Path(f"{locust_run}_stats_history.csv")), SYNTHETIC_HISTORY)
    return prefix


def test_the_installed_locust_writes_the_columns_the_report_reads(locust_run):
    history = _header(Path(f"{locust_run}_stats_history.csv"))
    stats = _header(Path(f"{locust_run}_stats.csv"))
    for column in ("Timestamp", "User Count", "Name", "Requests/s", "Failures/s", "50%", "99%",
                   "Total Request Count", "Total Failure Count", "Total Average Response Time"):
        assert column in history
    for column in ("Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
                   "Max Response Time", "Requests/s", "90%", "99%"):
        assert column in stats


def test_synthetic_steps_give_exact_per_level_figures(synthetic, tmp_path):
    written = report.render(synthetic, tmp_path / "out")
    markdown = (tmp_path / "out" / "steps_report.md").read_text()
    assert written[0].name == "steps_report.md"
    # users, held s, requests, failures, req/s (count delta / time delta), mean ms (exact), p50, p99 (cumulative)
    assert "| 10 | 3 | 250 | 0 | 83.3 | 20.0 | 20.0 | 42.0 |" in markdown
    assert "| 20 | 4 | 800 | 5 | 200.0 | 30.0 | 31.0 | 95.0 |" in markdown
    assert "cumulative since the start" in markdown
    assert "| POST /rerank | 1,050 | 5 | 0.48% |" in markdown
    for name in ("steps_report_users.png", "steps_report_time.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def test_timing_rows_are_not_counted_as_requests(locust_run, tmp_path):
    """locustfiles/common.py adds three timing rows per request, which locust's Aggregated counts too."""
    prefix = tmp_path / "timed"
    rows = []
    for ts, users, count, avg, p99 in ((100, 0, 0, 0.0, "N/A"), (101, 10, 100, 20.0, 40), (103, 10, 300, 20.0, 42)):
        timing = [_history_row(ts, users, count, 0, 5.0, 4, 9, name=f"x-{h}-time") | {"Type": "timing"}
                  for h in ("total", "queue", "inference")]
        aggregated = _history_row(ts, users, 4 * count, 0, (avg + 15.0) / 4, 10, p99)
        rows += ([_history_row(ts, users, count, 0, avg, 19, p99, name="/rerank")] if count else []) + timing
        rows.append(aggregated)
    _write(Path(f"{prefix}_stats_history.csv"), _header(Path(f"{locust_run}_stats_history.csv")), rows)
    _write(Path(f"{prefix}_stats.csv"), _header(Path(f"{locust_run}_stats.csv")), [
        {"Type": "POST", "Name": "/rerank", "Request Count": 300, "Failure Count": 0, "Median Response Time": 20,
         "Average Response Time": 20.0, "Max Response Time": 50, "Requests/s": 100.0, "90%": 30, "99%": 42}])
    report.render(prefix, tmp_path / "out")
    markdown = (tmp_path / "out" / "timed_report.md").read_text()
    # 300 requests in 3 s at 20 ms (not 1,200 at 8.75 ms), p50 and p99 of /rerank's windows
    assert "| 10 | 3 | 300 | 0 | 100.0 | 20.0 | 19.0 | 41.0 |" in markdown, markdown


def test_full_history_percentiles_are_read_as_windows(locust_run, tmp_path):
    prefix = tmp_path / "full"
    rows = SYNTHETIC_HISTORY + [_history_row(107, 20, 1050, 5, 27.6, 31, 95, name="/rerank")]
    _write(Path(f"{prefix}_stats_history.csv"), _header(Path(f"{locust_run}_stats_history.csv")), rows)
    levels, windowed = report.locust_levels(report._read_csv(Path(f"{prefix}_stats_history.csv")))
    assert windowed
    # The median of the level's windowed values, not its last one.
    assert [(lv["users"], lv["p50_ms"], lv["p99_ms"]) for lv in levels] == [(10, 20.0, 41.0), (20, 27.0, 91.0)]


def test_a_real_locust_run_through_the_reranker_command(locust_run, tmp_path, capsys):
    assert reranker(["report", f"{locust_run}_stats.csv", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / f"seed_report{suffix}") for suffix in (".md", "_users.png", "_time.png")]
    markdown = (tmp_path / "seed_report.md").read_text()
    with open(f"{locust_run}_stats.csv", newline="") as handle:
        total = next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")
    assert int(total["Request Count"]) > 0
    assert f"| Aggregated | {int(total['Request Count']):,} | {total['Failure Count']} |" in markdown
    assert "| 3 |" in markdown  # the level of 3 users
    assert (tmp_path / "seed_report_time.png").read_bytes().startswith(PNG)


def test_without_matplotlib_the_markdown_is_still_written(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    written = report.render(synthetic, tmp_path)
    assert [p.suffix for p in written] == [".md"]
    assert not list(tmp_path.glob("*.png"))
    assert report.NO_MATPLOTLIB in written[0].read_text()
    assert report.NO_MATPLOTLIB in capsys.readouterr().out


def _level(concurrency, pairs_per_s, p99):
    return {"concurrency": concurrency, "requests": 10, "failures": 0, "pairs_per_s": pairs_per_s,
            "tokens_per_s": pairs_per_s * 150, "p50_ms": p99 / 2, "p90_ms": p99 * 0.9, "p99_ms": p99,
            "elapsed_s": 2.0, "timeline": [{"t_s": 1.0, "pairs_per_s": pairs_per_s, "p50_ms": p99 / 2, "p99_ms": p99},
                                           {"t_s": 2.0, "pairs_per_s": pairs_per_s, "p50_ms": p99 / 2, "p99_ms": p99}]}


def _bench_json(path: Path) -> Path:
    def model(name, c_top):
        return {"model": name, "weights": "random", "ways": {
            "a": {"dtype": "float32", "load_s": 3.0, "levels": [_level(1, 100.0, 50.0), _level(64, 400.0, 900.0)]},
            "b": {"dtype": "float16", "load_s": 2.0, "peak_gpu_mib": 900,
                  "levels": [_level(1, 1000.0, 10.0), _level(64, 2000.0, 90.0)]},
            "c": {"dtype": "float16", "load_s": 4.0, "single_pair": {"p50_ms": 3.5},
                  "levels": [_level(1, 900.0, 12.0), _level(64, c_top, 100.0)]},
            "d": {"dtype": "float16", "load_s": 1.0, "levels": [_level(1, 300.0, 20.0), _level(64, 380.0, 400.0)]},
        }}

    path.write_text(json.dumps({"schema": "rerank_bench/1", "weights": "random", "settings": {"concurrency": [1, 64]},
                                "models": [model("fast-enough", 1900.0), model("too-slow", 1500.0)]}))
    return path


def test_bench_json_headline_and_plots(tmp_path):
    run = _bench_json(tmp_path / "run.json")
    assert reranker(["report", str(run)]) == 0
    markdown = (tmp_path / "run.md").read_text()
    # (c)/(d) at concurrency 64: 1900/380 = 5x over the libraries, 1500/380 = 3.95x.
    # (c)/(b) at concurrency 64: 1900/2000 costs 5% (met), 1500/2000 costs 25% (missed); (b)/(a) = 5x.
    assert "| fast-enough | 5.00x | 64 | 0.950 | 5.0% | met | 1.111 | 3.5 | 5.00x | 0 |" in markdown
    assert "| too-slow | 3.95x | 64 | 0.750 | 25.0% | **missed** |" in markdown
    assert "| (c) gateway + Triton | 64 | 10 | 0 | 1,900.0 |" in markdown
    for name in ("run.png", "run_time.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)


def test_detect_finds_one_run_or_says_what_is_there(locust_run, tmp_path):
    assert report.detect(Path(f"{locust_run}_stats_history.csv")) == ("locust", locust_run)
    assert report.detect(locust_run) == ("locust", locust_run)
    run = _bench_json(tmp_path / "run.json")
    assert report.detect(tmp_path) == ("bench", run)
    (tmp_path / "x_stats_history.csv").write_text("Timestamp\n")
    with pytest.raises(SystemExit, match="exactly one run"):
        report.detect(tmp_path)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a rerank_bench JSON"):
        report.detect(tmp_path / "other.json")
