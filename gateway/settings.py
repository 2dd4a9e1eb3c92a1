"""The gateway's settings: one object, read from `RERANKER_*` environment
variables (or given by the command line), validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.fleet import discovery
from rerank_engine import catalog


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")
    workers: int = Field(
        0, ge=0, le=64,
        description="Gateway worker processes serving the one port (launcher/workers.py), as one cluster on "
        "loopback: a switch through any of them switches all. 0: auto, half the machine's cores, 1 to 8 (one "
        "Python process serves ~1,000-2,000 requests/s). Always 1 in a cluster of gateways "
        "(RERANKER_SWITCH_COORDINATOR): scale those with more gateways.",
    )
    worker_index: int | None = Field(
        None, ge=0,
        description="Set by `reranker gateway` for each of its worker processes (0 is their switch coordinator); "
        "not a setting to give by hand.",
    )
    triton_url: str = Field(
        "localhost:8101",
        description="Triton's gRPC endpoints: host:port, a comma-separated list of them, or dns:///name:port (every "
        "address the name resolves to, looked up again every triton_resolve_interval_s: a Kubernetes headless "
        "Service), or dns://server:port/name:port (asked of that DNS server). Requests are balanced over them.",
    )
    triton_resolve_interval_s: float = Field(
        5.0, gt=0, description="How often a dns:// triton_url (or gateway_peers) is looked up again."
    )
    default_model: str = Field(
        "minilm-l6", description="Model (alias or Triton name) loaded and made active at start-up."
    )
    model_aliases: dict[str, str] = Field(
        default_factory=lambda: dict(catalog.ALIASES),
        description="Short names accepted wherever a model is named, mapped to Triton model names (JSON object); "
        "Hugging Face ids of the catalog's models are accepted as well.",
    )
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of one inference call to Triton.")
    model_load_timeout_s: float = Field(1800.0, gt=0, description="Deadline of one model load (large weights).")
    triton_startup_timeout_s: float = Field(
        180.0, ge=0, description="How long start-up waits for Triton to become live."
    )
    drain_timeout_s: float = Field(
        120.0, ge=0, description="How long a switch waits for the old model's requests before unloading it."
    )
    max_documents_per_request: int = Field(
        1000, ge=1, description="Most documents (or pairs) one request may carry, as Cohere allows."
    )
    max_chunks_per_doc: int = Field(
        1, ge=1,
        description="Windows a document longer than the model's window is scored in when the request does not say "
        "(max_chunks_per_doc); its score is the best window's. 1: no chunking, long documents are truncated.",
    )
    max_chunks_per_request: int = Field(
        10_000, ge=1, description="Most documents times max_chunks_per_doc one request may ask for, as Cohere allows."
    )
    unknown_model: Literal["error", "active"] = Field(
        "error",
        description="A scoring request naming a model the gateway does not know: 'error' answers 400; 'active' "
        "serves it with the active model and says so in the warnings (clients with a fixed model name).",
    )
    max_concurrent_requests: int = Field(
        1024, ge=1, description="Scoring requests in flight before new ones get 429 with Retry-After."
    )
    triton_watch_interval_s: float = Field(
        1.0, gt=0, description="How often the gateway checks that Triton is live, to reload models after a restart."
    )
    max_request_bytes: int = Field(
        64 * 2**20, ge=1024, description="Largest request body; leaves room for a 10 MB document, which is truncated."
    )
    bulk_rows_in_flight: int | None = Field(
        64, ge=1,
        description="Most rows of bulk requests (priority > 0) at Triton at once, per model, in chunks no larger; "
        "more wait in the gateway. Bounds the bulk work an interactive request finds ahead of it or in its batch "
        "(gateway/serving/priority.py). Unset: no bound, bulk fills whole batches.",
    )
    dispatch_window_rows: int | None = Field(
        None, ge=1,
        description="Most rows of any priority at Triton at once, per model; more wait in the gateway, the most "
        "urgent first, and each answered chunk lets the next one in at once. With priority levels or a queue "
        "policy, Triton's dynamic batcher does not build a batch ahead: a batch that ends without a new request "
        "arriving can leave the instance idle for up to 0.5 s (gateway/serving/priority.py). Unset: no window.",
    )
    coalesce_max_rows: int = Field(
        32, ge=0,
        description="Scoring calls of at most this many rows, for the same model, options and priority, are sent "
        "to Triton together (gateway/serving/coalescer.py); each caller gets its own rows back. 0: off.",
    )
    coalesce_max_in_flight: int = Field(
        4, ge=1,
        description="Coalesced requests per model and priority level at Triton at once, per worker process; calls "
        "arriving meanwhile wait for one to come back (at most coalesce_window_ms) and go out together.",
    )
    coalesce_window_ms: float = Field(
        2.0, ge=0, description="Longest a small call waits for company once coalesce_max_in_flight is reached.",
    )
    cache: bool = Field(
        False,
        description="The score cache (README, Cache): a pair scored once is answered from memory next time, under "
        "the same model, fingerprint, options and instruction. Off by default: it changes what a load test or an "
        "A/B comparison measures. RERANKER_CACHE_URL turns it on as well.",
    )
    cache_url: str | None = Field(
        None,
        description="redis://, rediss:// or unix:// URL of a Redis shared by every worker and gateway (the cache "
        "turns on); the in-process tier stays in front of it unless RERANKER_CACHE_MAX_BYTES is 0.",
    )
    cache_max_bytes: int = Field(
        128 * 2**20, ge=0,
        description="Bound of the in-process tier, per process (each gateway worker has its own): about 320 bytes "
        "a pair, least recently used out first. 0: no in-process tier (Redis only).",
    )
    cache_scope: Literal["key", "shared"] = Field(
        "key",
        description="'key': entries are scoped per API-key name, so one tenant cannot tell from response times "
        "what another scored; 'shared': every key reads every entry. Without API keys both are one scope.",
    )
    cache_secret: SecretStr | None = Field(
        None,
        description="Key of the keyed hash that makes the cache keys (set the same on every gateway sharing a "
        "Redis); unset: a random one per process in memory, none with Redis (a warning says so).",
    )
    cache_ttl_s: int = Field(
        7 * 86400, ge=0, description="Expiry of an entry in Redis; 0: none (Redis's maxmemory policy bounds it)."
    )
    cache_redis_timeout_s: float = Field(
        0.25, gt=0, description="Longest one Redis call may take before the request goes on without it."
    )
    cache_redis_retry_s: float = Field(
        5.0, gt=0, description="After a Redis failure, how long the cache goes without Redis before trying again."
    )
    access_log: bool = Field(
        True,
        description="One log line per request (gateway.access). About 5% of a worker's time at thousands of small "
        "requests a second; off where a proxy in front logs them. The metrics count every request either way.",
    )
    log_level: str = Field("info", description="Log level of the gateway (debug, info, warning, error).")
    switch_coordinator: str = Field(
        "",
        description="Base URL of the gateway that runs every model switch of a cluster of gateways (in "
        "Kubernetes the StatefulSet's pod 0). Empty: this gateway is alone and switches by itself.",
    )
    advertised_url: str = Field(
        "", description="This gateway's own base URL as the others reach it; equal to switch_coordinator on the "
        "coordinator. Required with switch_coordinator.",
    )
    gateway_peers: str = Field(
        "", description="Every gateway of the cluster (this one may be among them): base URLs, comma-separated, "
        "or dns:///name:port. The coordinator makes a new model active on each of them.",
    )
    peer_api_key: SecretStr = Field(
        SecretStr(""), description="Sent as 'Authorization: Bearer' on calls between gateways, and required on "
        "their /internal/ endpoints when set.",
    )
    switch_poll_interval_s: float = Field(
        1.0, gt=0, description="How often a gateway asks the coordinator for the active model, to catch up on a "
        "switch it missed (down, restarting, new).",
    )
    peer_timeout_s: float = Field(2.0, gt=0, description="Deadline of one call between gateways (a switch's "
                                  "forwarding waits as long as the switch itself).")
    api_keys_file: Path | None = Field(
        None,
        description="File of API keys, one per line: '<key> <scopes> [<name>]' (README, Security). With no keys "
        "from here or RERANKER_API_KEYS, every route is open and the gateway warns once at start-up.",
    )
    api_keys: SecretStr | None = Field(
        None, description="API keys in the key file's format, entries separated by newlines or ';'."
    )
    metrics_require_key: bool = Field(
        False, description="GET /metrics needs a key with the metrics (or admin) scope; open by default for Prometheus."
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP endpoint the gateway's traces go to (http://collector:4318, or its /v1/traces URL); "
        "tracing is off when unset.",
    )
    trace_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="Share of requests traced when no caller's traceparent decides (parent-based)."
    )
    service_name: str = Field("reranker-gateway", description="service.name of the gateway's traces.")

    @field_validator("api_keys_file", "api_keys", "otlp_endpoint", "bulk_rows_in_flight", "dispatch_window_rows",
                     "cache_url", "cache_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        # Compose and Kubernetes set a variable to "" to switch a feature off.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cache_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("cache_max_bytes")
    @classmethod
    def _room_for_entries(cls, value: int) -> int:
        if 0 < value < 2**20:
            raise ValueError("must be 0 (no in-process tier) or at least 1 MiB (1048576)")
        return value

    @property
    def cache_on(self) -> bool:
        return self.cache or self.cache_url is not None

    @field_validator("triton_url")
    @classmethod
    def _targets(cls, value: str) -> str:
        targets = discovery.parse_targets(value)
        if not targets.fixed and targets.dns is None:
            raise ValueError("must name at least one Triton (host:port, a list, or dns:///name:port)")
        return value

    @field_validator("gateway_peers")
    @classmethod
    def _peers(cls, value: str) -> str:
        discovery.parse_targets(value, urls=True)
        return value

    @field_validator("switch_coordinator", "advertised_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value:
            discovery.parse_targets(value, urls=True)
        return value

    @model_validator(mode="after")
    def _cluster(self) -> "GatewaySettings":
        if self.switch_coordinator and not self.advertised_url:
            raise ValueError("advertised_url (RERANKER_ADVERTISED_URL) is required with switch_coordinator: "
                             "it tells the coordinator which gateway it is")
        if self.workers > 1 and self.switch_coordinator and self.worker_index is None:
            raise ValueError("workers (RERANKER_WORKERS) must be 0 or 1 in a cluster of gateways "
                             "(RERANKER_SWITCH_COORDINATOR): each gateway of a cluster is one process; add gateways")
        return self

    @property
    def worker_count(self) -> int:
        """How many worker processes `reranker gateway` starts."""
        if self.worker_index is not None or self.switch_coordinator:
            return 1
        if self.workers:
            return self.workers
        return max(1, min(8, (os.cpu_count() or 2) // 2))

    @property
    def in_cluster(self) -> bool:
        return bool(self.switch_coordinator)

    @property
    def is_coordinator(self) -> bool:
        return self.in_cluster and self.advertised_url == self.switch_coordinator

    @property
    def catch_up_bound_s(self) -> float:
        """Longest a gateway that can reach the coordinator goes on using a model the coordinator has
        replaced: a poll in flight at the switch (peer_timeout_s), the wait to the next (switch_poll_interval_s),
        and that poll (peer_timeout_s)."""
        return self.switch_poll_interval_s + 2 * self.peer_timeout_s

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError(f"unknown log level {value!r}")
        return value.lower()
