"""Per-request timing headers, trace id, metrics and access log line, as a
plain ASGI middleware.

Every response gets `x-total-time` and `trace-id`, a scored one also gets
`x-queue-time` and `x-inference-time` (TEI's names, in milliseconds; the load
tests read them) and, while the score cache is on, `x-cache-hits` (pairs
answered from it), and one with warnings `x-warnings` (a JSON list of strings,
ASCII-escaped: the only place for them in TEI's bare-list answer). Once the
response is sent, the request goes into the metrics with its route, status
and, for a refusal, the reason, and into one access log line
(`gateway.access`) with the same trace id.

The trace id is the request span's when tracing is on (gateway/tracing.py);
with tracing off it is the caller's, from its `traceparent`, or a new random
one, so a client's report still finds the log line. With tracing on, the
request span gets the model, documents, tokens, truncated count and outcome.

It is plain ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs the
app in a separate task and streams the response through a memory channel on
every request.
"""

from __future__ import annotations

import json
import logging
import os
import time

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics
from gateway.tracing import current_trace_id, trace_id_from_traceparent

# Refusals made before any handler runs (the guards, Starlette's router) carry no error type.
REFUSAL_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                   415: "unsupported_media_type", 429: "in_flight_limit"}
UNOBSERVED_PATHS = ("/metrics", "/internal/cluster")  # scrapes and polls between gateways would otherwise
# dominate the request metrics and the log
TRACE_ID_HEADER = b"trace-id"

access_log = logging.getLogger("gateway.access")


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, tracing: bool = False, log_access: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing
        self.log_access = log_access  # the module's `access_log` is the logger it writes to

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})  # where `request.state` writes: the record, the error type
        answered: dict = {}

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
                answered["seconds"] = elapsed = time.perf_counter() - started
                answered["trace_id"] = trace_id = self._trace_id(scope)
                headers = [*message.get("headers", ()), (b"x-total-time", f"{elapsed * 1000:.3f}".encode()),
                           (TRACE_ID_HEADER, trace_id.encode())]
                record = state.get("record")
                if record is not None and record.inference_s is not None:
                    headers.append((b"x-queue-time", f"{record.queue_s * 1000:.3f}".encode()))
                    headers.append((b"x-inference-time", f"{record.inference_s * 1000:.3f}".encode()))
                if record is not None and record.cached is not None:
                    headers.append((b"x-cache-hits", str(record.cached).encode()))
                if record is not None and record.warnings:
                    headers.append((b"x-warnings", json.dumps(record.warnings).encode("ascii")))
                if self.tracing:
                    _annotate(trace.get_current_span(), record, message["status"], state.get("error_type"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, timed)
        path = getattr(scope.get("route"), "path", "unmatched")
        if "status" not in answered or path in UNOBSERVED_PATHS:
            return
        status = answered["status"]
        rejection = None
        if status >= 400:
            rejection = state.get("error_type") or REFUSAL_REASONS.get(status, f"http_{status}")
        record = state.get("record")
        self.metrics.observe(path, status, answered["seconds"], record, rejection)
        if self.log_access and access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %.1fms model=%s documents=%s key=%s error=%s trace_id=%s",
                f"{client[0]}:{client[1]}" if client else "-", scope["method"], scope["path"], status,
                answered["seconds"] * 1000, (record and record.model) or "-",
                "-" if record is None or record.documents is None else record.documents,
                state.get("api_key") or "-", rejection or "-", answered["trace_id"],
            )

    def _trace_id(self, scope: Scope) -> str:
        if self.tracing:
            traced = current_trace_id()
            if traced is not None:
                return traced
        for name, value in scope["headers"]:
            if name == b"traceparent":
                given = trace_id_from_traceparent(value)
                if given is not None:
                    return given
                break
        return os.urandom(16).hex()


def _annotate(span, record, status: int, error_type: str | None) -> None:
    """The request span's reranker attributes (OpenTelemetry sets the HTTP ones)."""
    if not span.is_recording():
        return
    attributes = {"reranker.status": error_type or ("ok" if status < 400 else f"http_{status}")}
    if record is not None:
        if record.model:
            attributes["reranker.model"] = record.model
        if record.documents is not None:
            attributes["reranker.documents"] = record.documents
            attributes["reranker.tokens"] = record.tokens or 0
            attributes["reranker.truncated_documents"] = record.truncated or 0
    span.set_attributes(attributes)
