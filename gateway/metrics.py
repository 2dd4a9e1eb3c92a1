"""The gateway's Prometheus metrics: what each request cost and carried, what
was refused and why, and which model is active, served at `GET /metrics`.

Triton exports its own side (queue and compute time, batch counts, GPU memory,
and the models' per-batch figures) on its metrics port; Prometheus scrapes
both, and the Grafana dashboard in `deploy/grafana/` reads both.

Counters whose labels are known in advance (rejection reasons, and switches
once the model names are read from Triton) start at 0: Prometheus sees a
series that first appears at 1 as no change, so the first refusal or first
switch to a model would otherwise never show in `rate`, `increase` or
`changes`.

Under `reranker gateway` with several workers (launcher/workers.py) each
worker writes its series to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus_client's multiprocess mode), and `/metrics` on any worker sums
them: counters and histograms over every worker that ever ran, the in-flight
gauge over the live ones; `reranker_active_model` is 1 for a model any live
worker sends new requests to, and `reranker_cluster_generation` the lowest
generation a live worker serves by (one lagging behind shows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from gateway.serving.cache import CachePolicy

# Latency of a rerank call spans a 1-pair CPU request to 1,000 documents on an 8B model.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DOCUMENT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)
COALESCED_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SWITCH_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

CONTENT_TYPE = CONTENT_TYPE_LATEST
NO_MODEL = "none"  # label of requests refused before a model was chosen


@dataclass
class RequestRecord:
    """What one request used, filled in by the service and read after the response:
    by the timing headers (TEI's names), the warnings header and the metrics."""

    model: str | None = None
    warnings: list[str] = field(default_factory=list)
    documents: int | None = None
    tokens: int | None = None
    truncated: int | None = None
    queue_s: float | None = None
    inference_s: float | None = None
    api_key: str | None = None  # the caller's key name (gateway/api/auth.py): the cache's scope
    cache: "CachePolicy | None" = None  # what the request lets the score cache do; None: everything
    cached: int | None = None  # pairs answered from the score cache; None while the cache is off

    def record_scores(self, outputs) -> None:
        """`outputs`: the gateway's ScoreOutputs of the whole request."""
        self.documents = len(outputs.score)
        self.tokens = int(outputs.num_tokens.sum())
        self.truncated = int(outputs.truncated.sum())
        self.inference_s = outputs.compute_s
        self.queue_s = max(outputs.round_trip_s - outputs.compute_s, 0.0)


class GatewayMetrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self) -> None:
        # Read by prometheus_client when it is imported: set by the worker supervisor before a worker starts.
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "reranker_request_duration_seconds", "Time from request received to response sent.",
            ["route", "model", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_seconds = Histogram(
            "reranker_triton_queue_duration_seconds",
            "Per request: Triton round trip minus the engine time of its batch (queueing, transfer, batching).",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_seconds = Histogram(
            "reranker_inference_duration_seconds", "Per request: engine time of the Triton batch it rode in.",
            ["model"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.documents = Histogram(
            "reranker_request_documents", "Documents (or pairs) per scoring request.",
            ["route", "model"], buckets=DOCUMENT_BUCKETS, registry=r,
        )
        self.tokens = Histogram(
            "reranker_request_tokens", "Tokens scored per request, after truncation.",
            ["route", "model"], buckets=TOKEN_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("reranker_requests_in_flight", "Scoring requests being served now.", registry=r,
                               multiprocess_mode="livesum")
        self.rejections = Counter(
            "reranker_rejections_total", "Requests answered with an error, by reason.", ["reason"], registry=r
        )
        self.switches = Counter(
            "reranker_model_switches_total", "Model switches, by target and outcome.", ["model", "outcome"],
            registry=r,
        )
        self.switch_seconds = Histogram(
            "reranker_model_switch_duration_seconds", "Time a successful /switch_model took, load and drain included.",
            ["model"], buckets=SWITCH_BUCKETS, registry=r,
        )
        self.active_model = Gauge(
            "reranker_active_model", "1 for the model new requests go to, 0 for models active before.", ["model"],
            registry=r, multiprocess_mode="livemax",
        )
        self.coalesced = Histogram(
            "reranker_coalesced_calls", "Scoring calls carried by each coalesced Triton request "
            "(RERANKER_COALESCE_MAX_ROWS).", buckets=COALESCED_BUCKETS, registry=r,
        )
        self.cluster_generation = Gauge(
            "reranker_cluster_generation",
            "Generation of the cluster state this gateway serves by (gateway.fleet.cluster; "
            "0 alone or before the first): gateways of one cluster that differ for long have missed a switch.",
            registry=r, multiprocess_mode="livemin",
        )

        # The score cache (gateway/serving/cache.py), in pairs. Created with every series at 0 whether the
        # cache is on or not, so the dashboard's panel reads 0, not "no data".
        self.cache_hits = Counter("reranker_cache_hits_total", "Pairs answered from the score cache, by tier.",
                                  ["tier"], registry=r)
        self.cache_misses = Counter("reranker_cache_misses_total", "Pairs looked up in the score cache and not found.",
                                    registry=r)
        self.cache_skipped = Counter(
            "reranker_cache_skipped_total", "Pairs scored without being looked up: the request asked (request), the "
            "model's fingerprint is not confirmed since its (re)load (unconfirmed), or hits scored again because the "
            "model answered with another fingerprint (stale).", ["reason"], registry=r,
        )
        # Summed over the live workers: each has its own in-process tier.
        self.cache_entries = Gauge("reranker_cache_entries", "Entries of the in-process cache tiers.",
                                   registry=r, multiprocess_mode="livesum")
        self.cache_bytes = Gauge("reranker_cache_bytes", "Bytes held by the in-process cache tiers.",
                                 registry=r, multiprocess_mode="livesum")
        self.cache_evictions = Counter(
            "reranker_cache_evictions_total", "Entries the in-process tier dropped for room (least recently used).",
            registry=r)
        self.cache_redis_errors = Counter(
            "reranker_cache_redis_errors_total", "Redis calls of the score cache that failed or timed out, by "
            "operation (get, set, ping; set_dropped: writes dropped while too many were in flight).",
            ["operation"], registry=r,
        )
        self.cache_redis_up = Gauge(
            "reranker_cache_redis_up", "1 while the score cache uses its Redis, 0 while its circuit breaker is open "
            "after a failure; 0 without Redis (with workers: 0 if any live worker's breaker is open).", registry=r,
            multiprocess_mode="livemin",
        )
        for tier in ("memory", "redis"):
            self.cache_hits.labels(tier)
        for reason in ("request", "unconfirmed", "stale"):
            self.cache_skipped.labels(reason)
        for operation in ("get", "set", "ping", "set_dropped"):
            self.cache_redis_errors.labels(operation)

    def watch_cache(self, memory) -> None:
        """`memory`: the cache's in-process tier (or None), read at every scrape."""
        if memory is not None:
            self.cache_entries.set_function(lambda: memory.entries)
            self.cache_bytes.set_function(lambda: memory.bytes)

    def start_at_zero(self, reasons: Iterable[str]) -> None:
        """Create the rejection series of every reason the gateway can give, at 0."""
        for reason in reasons:
            self.rejections.labels(reason)

    def known_models(self, models: Iterable[str]) -> None:
        """Create each model's switch series at 0; called once the repository's models are known."""
        for model in models:
            for outcome in ("ok", "failed"):
                self.switches.labels(model, outcome)
            self.switch_seconds.labels(model)

    def set_active(self, model: str | None) -> None:
        for labels in list(self.active_model._metrics):  # keep the series, so a switch shows as a step to 0
            self.active_model.labels(*labels).set(0)
        if model is not None:
            self.active_model.labels(model).set(1)

    def switched(self, model: str, seconds: float, ok: bool) -> None:
        self.switches.labels(model, "ok" if ok else "failed").inc()
        if ok:
            self.switch_seconds.labels(model).observe(seconds)

    def observe(self, route: str, status: int, seconds: float, record: RequestRecord | None,
                rejection: str | None) -> None:
        model = record.model if record is not None and record.model else NO_MODEL
        self.request_seconds.labels(route, model, str(status)).observe(seconds)
        if rejection is not None:
            self.rejections.labels(rejection).inc()
        if record is None or record.documents is None:
            return
        self.documents.labels(route, model).observe(record.documents)
        self.tokens.labels(route, model).observe(record.tokens or 0)
        if record.inference_s is not None:
            self.inference_seconds.labels(model).observe(record.inference_s)
            self.queue_seconds.labels(model).observe(record.queue_s or 0.0)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # every worker's files, summed as each metric's mode says
        MultiProcessCollector(registry, self.multiprocess_dir)
        return generate_latest(registry)

