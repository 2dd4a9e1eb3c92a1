"""Per-request timing headers and metrics, as a plain ASGI middleware.

Every response gets `x-total-time`, and a scored one also gets `x-queue-time`
and `x-inference-time` (TEI's names, in milliseconds; the load tests read
them), and `x-warnings` when the request had any (a JSON list of strings,
ASCII-escaped: the only place for them in TEI's bare-list answer). Once the response is sent, the request goes into the metrics with its
route, status and, for a refusal, the reason.

It is plain ASGI rather than Starlette's `BaseHTTPMiddleware`, which runs the
app in a separate task and streams the response through a memory channel on
every request.
"""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics

# Refusals made before any handler runs (the guards, Starlette's router) carry no error type.
REFUSAL_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                   415: "unsupported_media_type", 429: "in_flight_limit"}
UNOBSERVED_PATHS = ("/metrics",)  # scrapes would otherwise dominate the request metrics


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

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
                headers = [*message.get("headers", ()), (b"x-total-time", f"{elapsed * 1000:.3f}".encode())]
                record = state.get("record")
                if record is not None and record.inference_s is not None:
                    headers.append((b"x-queue-time", f"{record.queue_s * 1000:.3f}".encode()))
                    headers.append((b"x-inference-time", f"{record.inference_s * 1000:.3f}".encode()))
                if record is not None and record.warnings:
                    headers.append((b"x-warnings", json.dumps(record.warnings).encode("ascii")))
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
        self.metrics.observe(path, status, answered["seconds"], state.get("record"), rejection)
