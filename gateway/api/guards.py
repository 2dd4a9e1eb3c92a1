"""Request guards that run before any parsing: POST bodies must be JSON and
no larger than the configured limit, checked on the declared length and on
the bytes actually received (chunked bodies declare none); and scoring
requests beyond the in-flight bound are turned away at once with 429 and
Retry-After, before they queue up and time out. A POST that no route takes
(a wrong path or method) is left to the router's 404 or 405."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from prometheus_client import Gauge
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.auth import matched_route
from gateway.errors import ErrorKind, error_body


UNBOUNDED_PATHS = ("/switch_model",)  # control requests are never turned away for load


class RequestGuards:
    def __init__(self, app: ASGIApp, max_request_bytes: int, max_concurrent_requests: int,
                 in_flight_gauge: Gauge | None = None) -> None:
        self.app = app
        self.max_bytes = max_request_bytes
        self.max_in_flight = max_concurrent_requests
        self.in_flight = 0
        self.in_flight_gauge = in_flight_gauge  # moved with the count (a gauge that calls back cannot be summed
        # over worker processes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or matched_route(scope) is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            return await self._refuse(scope, receive, send, 415, "content-type must be application/json")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, 413, self._too_large())
        if scope["path"] not in UNBOUNDED_PATHS:
            if self.in_flight >= self.max_in_flight:
                message = f"{self.in_flight} requests in flight, the limit (RERANKER_MAX_CONCURRENT_REQUESTS); retry"
                return await self._refuse(scope, receive, send, 429, message, {"retry-after": "1"})
            self.in_flight += 1
            if self.in_flight_gauge is not None:
                self.in_flight_gauge.inc()
            try:
                return await self._checked(scope, receive, send)
            finally:
                self.in_flight -= 1
                if self.in_flight_gauge is not None:
                    self.in_flight_gauge.dec()
        return await self._checked(scope, receive, send)

    async def _checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._too_large())  # FastAPI lets HTTPException through body parsing
            return message

        await self.app(scope, counted, send)

    def _too_large(self) -> str:
        return f"request body is over the {self.max_bytes}-byte limit (RERANKER_MAX_REQUEST_BYTES)"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str,
                      headers: dict[str, str] | None = None) -> None:
        kind = ErrorKind.OVERLOADED if status == 429 else ErrorKind.INVALID_REQUEST
        body = error_body(kind, message, None if status == 429 else "body")
        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)

