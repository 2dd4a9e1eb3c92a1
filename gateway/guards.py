"""Request guards that run before any parsing: POST bodies must be JSON and
no larger than the configured limit, checked on the declared length and on
the bytes actually received (chunked bodies declare none)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestGuards:
    def __init__(self, app: ASGIApp, max_request_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            return await self._refuse(scope, receive, send, 415, "content-type must be application/json")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, 413, self._too_large())
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

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        from fastapi.responses import JSONResponse

        from gateway.errors import ErrorKind, error_body

        response = JSONResponse(error_body(ErrorKind.INVALID_REQUEST, message, "body"), status_code=status)
        await response(scope, receive, send)
