"""Every error the gateway answers with, and its HTTP status: one table.

Handlers render all of them, request validation errors included, as
`{"error": message, "error_type": kind, "field": ...}`.
"""

from __future__ import annotations

from enum import Enum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gateway.protocol import UNION_TAGS


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_NOT_LOADED = "model_not_loaded"
    INPUT_TOO_LONG = "input_too_long"
    NO_ACTIVE_MODEL = "no_active_model"
    MODEL_LOAD_FAILED = "model_load_failed"
    MODEL_NOT_READY = "model_not_ready"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_TIMEOUT = "backend_timeout"
    OVERLOADED = "overloaded"
    BACKEND_ERROR = "backend_error"


STATUS = {
    ErrorKind.INVALID_REQUEST: 422,
    ErrorKind.UNKNOWN_MODEL: 400,
    ErrorKind.MODEL_NOT_LOADED: 400,
    ErrorKind.INPUT_TOO_LONG: 400,
    ErrorKind.NO_ACTIVE_MODEL: 503,
    ErrorKind.MODEL_LOAD_FAILED: 503,
    ErrorKind.MODEL_NOT_READY: 503,
    ErrorKind.BACKEND_UNAVAILABLE: 503,
    ErrorKind.BACKEND_TIMEOUT: 504,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.BACKEND_ERROR: 500,
}


class GatewayError(Exception):
    def __init__(self, kind: ErrorKind, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        return STATUS[self.kind]


def error_body(kind: ErrorKind, message: str, field: str | None = None) -> dict:
    body = {"error": message, "error_type": kind.value}
    if field:
        body["field"] = field
    return body


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        request.state.error_type = exc.kind.value  # the rejection reason in the metrics
        return JSONResponse(error_body(exc.kind, exc.message, exc.field), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error_type = ErrorKind.INVALID_REQUEST.value
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":  # loc holds a character offset, not a field
            message = f"body: invalid JSON at character {first['loc'][-1]} ({first.get('ctx', {}).get('error', '')})"
            return JSONResponse(error_body(ErrorKind.INVALID_REQUEST, message, "body"), status_code=422)
        location = [str(part) for part in first.get("loc", ()) if part != "body" and part not in UNION_TAGS]
        field = ".".join(location) or "body"
        message = f"{field}: {first.get('msg', 'invalid value')}"
        return JSONResponse(error_body(ErrorKind.INVALID_REQUEST, message, field), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own refusals (unparsable body, unknown path, wrong method) in the same shape.
        field = "body" if exc.status_code in (400, 413, 415) else None
        body = error_body(ErrorKind.INVALID_REQUEST, str(exc.detail), field)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
