"""The gateway's settings: one object, read from `RERANKER_*` environment
variables (or given by the command line), validated at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
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
    log_level: str = Field("info", description="Log level of the gateway (debug, info, warning, error).")

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
