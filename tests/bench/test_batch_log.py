"""bench.batch_log on batch lines as Triton logs them (escaped JSON inside the
log message), mixed with the gateway's and Triton's own lines."""

from __future__ import annotations

import json

from bench import batch_log


def triton_line(at: str, **fields) -> str:
    record = {"event": "batch", "model": "m", "pairs": 64, "compute_ms": 100.0, "host_ms": 1.0,
              "telemetry_ms": 2.0, "gc_ms": 0.0, **fields}
    escaped = json.dumps(record, separators=(",", ":")).replace('"', '\\"')
    return f'I1201 {at} 1375 telemetry.py:125] "{escaped}"'


LOG = "\n".join([
    'I1201 05:48:40.000000 1375 model_lifecycle.cc:849] "successfully loaded \'m\'"',
    triton_line("05:48:43.956260", idle_ms=None),
    "2026-12-01 05:48:44,000 INFO gateway.access: 127.0.0.1:1 POST /v1/rerank 200 10.0ms",
    triton_line("05:48:44.076241", idle_ms=2.0),
    triton_line("05:48:44.600000", idle_ms=400.0),
    triton_line("05:48:44.700000", idle_ms=4.0, model="other"),
])


def test_the_batches_of_one_model_and_their_stalls(tmp_path):
    records = batch_log.batches(LOG, "m")
    assert [r["at"] for r in records] == ["05:48:43.956260", "05:48:44.076241", "05:48:44.600000"]
    result = batch_log.summary(records, stall_ms=30)
    assert result["batches"] == 3
    assert result["idle_ms"] == {"median": 201.0, "sum": 402.0}  # the first batch has no hand-over before it
    assert result["telemetry_ms"] == {"median": 2.0, "sum": 6.0}
    assert result["stalls"] == {"count": 1, "sum_ms": 400.0, "each": [{"at": "05:48:44.600000", "idle_ms": 400.0}]}
    path = tmp_path / "serve.log"
    path.write_text(LOG)
    assert batch_log.main([str(path)])[0]["batches"] == 4  # no --model: every model's batches
