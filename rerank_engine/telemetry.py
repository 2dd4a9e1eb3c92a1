"""What each executed batch of a Triton model did, told two ways: one JSON log
line per batch and the same figures as Prometheus metrics on Triton's metrics
port. The Triton model hands in the python backend's `MetricFamily` class and
a log function, so this module stays free of Triton imports and testable.

Document and query text never appears here: only counts and times.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from rerank_engine.pairs import RunStats

BATCH_LOG_LEVELS = ("info", "verbose", "off")
PAIR_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
SECONDS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


@dataclass(frozen=True)
class BatchRecord:
    model: str
    requests: int
    rejected: int  # requests answered with an error (bad input, cancelled) before scoring
    pairs: int
    tokens: int  # tokens of the sequences the network ran (a bi-encoder runs a shared query once)
    padded_tokens: int  # tokens the network ran, padding included
    micro_batches: int
    queue_ms: float | None  # longest wait of a request of this batch since the gateway sent it
    compute_ms: float  # the engine's `score()`
    host_ms: float  # the rest of `execute` before this record: reading the requests, building the responses
    idle_ms: float | None  # from the previous batch's record to this `execute`: Triton's hand-over between batches
    telemetry_ms: float  # the previous batch's log line and metrics (each a message to the Triton process)
    gc_ms: float  # time this process spent in Python's garbage collector since the previous batch's record
    gpu_memory_bytes: int
    gpu_peak_bytes: int

    @property
    def padding_ratio(self) -> float:
        return 0.0 if not self.padded_tokens else round(1 - self.tokens / self.padded_tokens, 4)

    def log_line(self) -> str:
        fields = {"event": "batch", **asdict(self), "padding_ratio": self.padding_ratio}
        return json.dumps(fields, separators=(",", ":"))


def gpu_memory(device: torch.device) -> tuple[int, int]:
    """(allocated now, peak since the last call) on a CUDA device; zeros elsewhere."""
    if device.type != "cuda":
        return 0, 0
    now, peak = torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return now, peak


def queue_ms(sent_at_ns: list[int], started_ns: int) -> float | None:
    """Longest wait of the batch, from the gateway's send time (same host clock) to execute()."""
    waits = [started_ns - sent for sent in sent_at_ns if sent]
    return round(max(waits) / 1e6, 3) if waits else None


class GcPauses:
    """Time the process spends in Python's garbage collector, from `gc.callbacks`. A full collection
    walks every tracked object, and a process holding a loaded model has millions: such a pause stops
    the instance between batches, where no engine timing sees it."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._total_s = 0.0
        self._taken_s = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._total_s += time.perf_counter() - self._started
            self._started = None

    def take_ms(self) -> float:
        """Milliseconds of collection since the previous call."""
        since, self._taken_s = self._total_s - self._taken_s, self._total_s
        return round(since * 1000, 3)

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


class BatchTelemetry:
    def __init__(self, model: str, device: torch.device, metric_family=None,
                 log: Callable[[str], None] | None = None, level: str = "info") -> None:
        if level not in BATCH_LOG_LEVELS:
            raise ValueError(f"batch_log must be one of {', '.join(BATCH_LOG_LEVELS)}, got {level!r}")
        self.model = model
        self.device = device
        self.log = log if level != "off" else None
        self._metrics = _Metrics(metric_family, model) if metric_family is not None else None
        self._gc = GcPauses()
        self._ended_ns: int | None = None  # when the previous record returned
        self._telemetry_s = 0.0  # what the previous record's log line and metrics took

    def record(self, *, requests: int, rejected: int, pairs: int, run: RunStats | None,
               sent_at_ns: list[int], started_ns: int, compute_s: float) -> BatchRecord:
        recorded_ns = time.time_ns()
        now, peak = gpu_memory(self.device)
        run = run or RunStats()
        record = BatchRecord(
            model=self.model, requests=requests, rejected=rejected, pairs=pairs, tokens=run.tokens,
            padded_tokens=run.padded_tokens, micro_batches=run.micro_batches,
            queue_ms=queue_ms(sent_at_ns, started_ns), compute_ms=round(compute_s * 1000, 3),
            host_ms=round(max((recorded_ns - started_ns) / 1e6 - compute_s * 1000, 0.0), 3),
            idle_ms=None if self._ended_ns is None else round((started_ns - self._ended_ns) / 1e6, 3),
            telemetry_ms=round(self._telemetry_s * 1000, 3), gc_ms=self._gc.take_ms(),
            gpu_memory_bytes=now, gpu_peak_bytes=peak,
        )
        started = time.perf_counter()
        if self.log is not None:
            self.log(record.log_line())
        if self._metrics is not None:
            self._metrics.observe(record)
        self._telemetry_s = time.perf_counter() - started
        self._ended_ns = time.time_ns()
        return record

    def close(self) -> None:
        self._gc.close()


class _Metrics:
    """The python backend's custom metrics (Triton 24.08+ for histograms), labelled by model."""

    def __init__(self, family, model: str) -> None:
        labels = {"model": model}
        self._families = []  # Triton drops a family's metrics when the family object is collected

        def metric(name: str, doc: str, kind, **options):
            self._families.append(family(name, doc, kind))
            return self._families[-1].Metric(labels=labels, **options)

        def counter(name: str, doc: str):
            return metric(name, doc, family.COUNTER)

        def histogram(name: str, doc: str, buckets: list[float]):
            return metric(name, doc, family.HISTOGRAM, buckets=buckets)

        def gauge(name: str, doc: str):
            return metric(name, doc, family.GAUGE)

        self.batches = counter("reranker_model_batches_total", "Batches executed by the model.")
        self.requests = counter("reranker_model_requests_total", "Requests in executed batches.")
        self.rejected = counter("reranker_model_rejected_requests_total", "Requests refused inside the model.")
        self.pairs = counter("reranker_model_pairs_total", "Pairs scored.")
        self.tokens = counter("reranker_model_tokens_total", "Tokens scored, padding excluded.")
        self.padded = counter("reranker_model_padded_tokens_total", "Tokens run through the network, padding included.")
        self.batch_pairs = histogram("reranker_model_batch_pairs", "Pairs per executed batch.", PAIR_BUCKETS)
        self.compute = histogram("reranker_model_compute_seconds", "Engine time per batch.", SECONDS_BUCKETS)
        self.gc = counter("reranker_model_gc_seconds_total",
                          "Time the model instance's process spent in Python's garbage collector.")
        self.queue = histogram(
            "reranker_model_queue_seconds", "Per batch: longest wait since the gateway sent a request.",
            SECONDS_BUCKETS,
        )
        self.gpu_memory = gauge("reranker_model_gpu_memory_bytes", "GPU memory allocated by the model's torch.")
        self.gpu_peak = gauge("reranker_model_gpu_peak_bytes", "Peak GPU memory of the last batch.")

    def observe(self, record: BatchRecord) -> None:
        self.batches.increment(1)
        self.requests.increment(record.requests)
        self.rejected.increment(record.rejected)
        self.pairs.increment(record.pairs)
        self.tokens.increment(record.tokens)
        self.padded.increment(record.padded_tokens)
        if record.pairs:
            self.batch_pairs.observe(record.pairs)
            self.compute.observe(record.compute_ms / 1000)
        if record.queue_ms is not None:
            self.queue.observe(record.queue_ms / 1000)
        self.gc.increment(record.gc_ms / 1000)
        self.gpu_memory.set(record.gpu_memory_bytes)
        self.gpu_peak.set(record.gpu_peak_bytes)
