"""The batch telemetry's garbage-collector accounting: what a collection costs
the instance's process shows in the next batch's record."""

from __future__ import annotations

import gc
import json

import torch

from rerank_engine.telemetry import BatchTelemetry, GcPauses


def test_collections_between_batches_show_in_the_next_record():
    lines: list[str] = []
    telemetry = BatchTelemetry("m", torch.device("cpu"), log=lines.append)
    try:
        first = telemetry.record(requests=1, rejected=0, pairs=1, run=None, sent_at_ns=[], started_ns=0,
                                 compute_s=0.001)
        garbage = [[i] for i in range(200_000)]  # tracked objects for a full collection to walk
        gc.collect()
        second = telemetry.record(requests=1, rejected=0, pairs=1, run=None, sent_at_ns=[], started_ns=0,
                                  compute_s=0.001)
        third = telemetry.record(requests=1, rejected=0, pairs=1, run=None, sent_at_ns=[], started_ns=0,
                                 compute_s=0.001)
        del garbage
    finally:
        telemetry.close()
    assert second.gc_ms > 0.1  # walking 200,000 lists takes well over 0.1 ms
    assert third.gc_ms < second.gc_ms  # taken once: the next record starts from zero
    assert json.loads(lines[1])["gc_ms"] == second.gc_ms and first.gc_ms >= 0


def test_a_batch_record_splits_the_execute_and_the_hand_over():
    import time

    telemetry = BatchTelemetry("m", torch.device("cpu"), log=lambda line: time.sleep(0.02))
    try:
        started = time.time_ns()
        time.sleep(0.03)  # 30 ms of execute, 10 of them in score()
        first = telemetry.record(requests=1, rejected=0, pairs=1, run=None, sent_at_ns=[], started_ns=started,
                                 compute_s=0.01)
        time.sleep(0.05)  # Triton hands over the next batch
        second = telemetry.record(requests=1, rejected=0, pairs=1, run=None, sent_at_ns=[],
                                  started_ns=time.time_ns(), compute_s=0.0)
    finally:
        telemetry.close()
    assert first.idle_ms is None and first.telemetry_ms == 0  # nothing came before it
    assert 19 <= first.host_ms < 200
    assert 45 <= second.idle_ms < 300
    assert 19 <= second.telemetry_ms < 200  # the first record's (slow) log line


def test_closing_unhooks_the_callback():
    pauses = GcPauses()
    assert pauses._callback in gc.callbacks
    pauses.close()
    pauses.close()
    assert pauses._callback not in gc.callbacks
