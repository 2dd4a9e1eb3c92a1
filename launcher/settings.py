"""Settings of the Triton side of the launcher, read from `RERANKER_*`
environment variables; command-line flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# An editable or source checkout keeps model_repository/ and models/ beside the packages.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _in_project_or_cwd(name: str) -> Path:
    return PROJECT_ROOT / name if (PROJECT_ROOT / name).exists() else Path.cwd() / name


class TritonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RERANKER_", extra="ignore")

    model_repository: Path = Field(
        default_factory=lambda: _in_project_or_cwd("model_repository"), description="Triton model repository."
    )
    models_dir: Path = Field(
        default_factory=lambda: _in_project_or_cwd("models"), description="Folder holding the weights folders."
    )
    triton_http_port: int = Field(8100, ge=1, le=65535, description="Triton's HTTP port.")
    triton_grpc_port: int = Field(8101, ge=1, le=65535, description="Triton's gRPC port (the gateway uses it).")
    triton_metrics_port: int = Field(8102, ge=1, le=65535, description="Triton's Prometheus metrics port.")
    tritonserver: Path | None = Field(
        None, description="tritonserver binary; default: the one on PATH, else the nvidia-pytriton wheel's."
    )
    triton_bind_address: str = Field(
        "127.0.0.1",
        description="Address Triton's HTTP, gRPC and metrics ports listen on. Loopback by default: only the "
        "gateway talks to Triton, and its repository API can unload any model. 0.0.0.0 in a container or pod, "
        "behind a network policy.",
    )
    triton_config_name: str = Field(
        "auto",
        description="Triton's --model-config-name: a model with configs/<name>.pbtxt loads that instead of "
        "config.pbtxt. auto: 'gpu' when a GPU is visible, else none.",
    )
    triton_log_verbose: int = Field(0, ge=0, description="tritonserver --log-verbose level.")
    triton_trace_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP endpoint for Triton's own OpenTelemetry traces (http://collector:4318, or its "
        "/v1/traces URL); Triton's spans join the gateway's traces through the traceparent it sends. Off when unset.",
    )
    triton_trace_rate: int = Field(
        1, ge=1, description="Triton traces one request in this many (its --trace-config rate), traced gateway "
        "requests or not.",
    )
    triton_startup_timeout_s: float = Field(180.0, gt=0, description="How long `serve` waits for Triton.")
