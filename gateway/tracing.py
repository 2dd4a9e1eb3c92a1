"""OpenTelemetry traces of the gateway: off unless RERANKER_OTLP_ENDPOINT is set.

What traces what:
- FastAPI's own instrumentation (`FastAPI(telemetry=...)`) makes the request's
  server span, honouring a caller's W3C `traceparent`, with child spans for
  dependency resolution and body validation (`fastapi.dependencies`), the
  endpoint and serialization. Probes and scrapes are left out.
- The OpenTelemetry gRPC aio client instrumentation makes a span per call to
  Triton and puts `traceparent` in its gRPC metadata, so Triton's own spans
  (`reranker triton` with RERANKER_TRITON_TRACE_ENDPOINT) join the trace.
  Only the channel of this app's Triton client is instrumented, and only calls
  made inside a traced request are: the liveness watcher's polling is not.
- Hand-written spans where no instrumentation exists: waiting for a model
  lease, and a switch's lock, load and drain (gateway/serving/model_manager.py).
- `RequestObserver` puts the model, documents, tokens, truncated count and
  outcome on the request span, the trace id in the `trace-id` response header
  and in the request's access log line.

One TracerProvider per app (given, or built from the settings), never the
process-global one, so apps in one process (the tests) keep their spans apart.
With tracing off nothing here runs on a request: FastAPI's telemetry is
disabled, the channel has no interceptors, and the hand-written spans go to
a no-op tracer.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from opentelemetry import trace

from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

UNTRACED_PATHS = frozenset({"/health", "/health/ready", "/metrics"})
"""Probes and scrapes: a trace every few seconds per probe, and nothing to learn from them."""

TRACER_NAME = "reranker.gateway"


class Tracing:
    """The tracer provider of one app, or none (tracing off)."""

    def __init__(self, provider: "trace.TracerProvider | None") -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME) if provider is not None else trace.NoOpTracer()

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def span(self, name: str, **attributes):
        """A hand-written child span of the current one, current while open; with tracing off a null
        context, cheaper than the no-op tracer's (which still swaps the context)."""
        if self.provider is None:
            return contextlib.nullcontext(trace.INVALID_SPAN)
        return self.tracer.start_as_current_span(name, attributes=attributes or None)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> "Tracing":
        if not settings.otlp_endpoint:
            return cls(None)
        return cls(_otlp_provider(settings))

    def fastapi_config(self) -> dict:
        """`FastAPI(telemetry=...)`: server and operation spans with this provider; FastAPI's OpenTelemetry
        metrics and logs stay off (Prometheus has the metrics, the access log the requests)."""
        if not self.enabled:
            return {"tracing": False, "metrics": False, "logs": False}
        return {
            "tracer_provider": self.provider, "tracing": True, "metrics": False, "logs": False,
            "operation_spans": True, "exclude": lambda scope: scope.get("path") in UNTRACED_PATHS,
        }

    @contextlib.contextmanager
    def instrumented_grpc(self) -> Iterator[None]:
        """While open, gRPC aio channels get the OpenTelemetry client interceptors of this provider: open it
        around creating the app's Triton client. The instrumentation patches grpc.aio's channel constructors
        process-wide; closing restores them, so only the channels made inside carry interceptors."""
        if not self.enabled:
            yield
            return
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient

        instrumentor = GrpcAioInstrumentorClient(filter_=_inside_a_traced_request)
        instrumentor.instrument(tracer_provider=self.provider)
        try:
            yield
        finally:
            instrumentor.uninstrument()

    def shutdown(self) -> None:
        """Export what is buffered (at exit)."""
        if self.provider is not None and hasattr(self.provider, "shutdown"):
            self.provider.shutdown()


def _inside_a_traced_request(_call_details) -> bool:
    return trace.get_current_span().get_span_context().is_valid


def traces_url(endpoint: str) -> str:
    """An OTLP/HTTP base URL (http://collector:4318) or the full traces URL; the exporter wants the latter."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else f"{endpoint}/v1/traces"


def _otlp_provider(settings: GatewaySettings):
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    resource = Resource.create({"service.name": settings.service_name,
                                "service.instance.id": f"{os.uname().nodename}:{settings.port}"})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    # Batched, in a background thread: a request never waits on the collector; a collector that is down
    # costs dropped spans (logged by the SDK), never failed requests.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint))))
    log.info("tracing: OTLP/HTTP to %s, sampling %.0f%% of new traces", traces_url(settings.otlp_endpoint),
             settings.trace_sample_ratio * 100)
    return provider


def current_trace_id() -> str | None:
    """The trace id of the request being served, as 32 hex digits, when it is traced."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def trace_id_from_traceparent(value: bytes) -> str | None:
    """The trace id of a W3C `traceparent` header (version-traceid-parentid-flags), if well formed."""
    parts = value.split(b"-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    trace_id = parts[1].decode("latin-1").lower()
    if trace_id == "0" * 32 or any(c not in "0123456789abcdef" for c in trace_id):
        return None
    return trace_id
