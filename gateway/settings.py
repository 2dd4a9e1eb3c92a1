"""The gateway's settings: one object, read from `RERANKER_*` environment
variables (or given by the command line), validated at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rerank_engine import catalog


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")
    triton_url: str = Field("localhost:8101", description="Triton's gRPC endpoint, host:port.")
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
        "(gateway/priority.py). Unset: no bound, bulk fills whole batches.",
    )
    log_level: str = Field("info", description="Log level of the gateway (debug, info, warning, error).")
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

    @field_validator("api_keys_file", "api_keys", "otlp_endpoint", "bulk_rows_in_flight", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        # Compose and Kubernetes set a variable to "" to switch a feature off.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("triton_url")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"must be host:port, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError(f"unknown log level {value!r}")
        return value.lower()
