"""Every error the gateway answers with, and its HTTP status: one table.

Handlers render all of them, request validation errors included, as
`{"error": message, "error_type": kind, "field": ..., "detail": message}`: `detail`
repeats the message where FastAPI's and Jina's clients read it.
"""

from __future__ import annotations

from enum import Enum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pydantic import BaseModel

from gateway.api import protocol


class ErrorKind(str, Enum):
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_NOT_LOADED = "model_not_loaded"
    INPUT_TOO_LONG = "input_too_long"
    UNSUPPORTED_OPTION = "unsupported_option"  # a valid field that the model cannot honour
    EMPTY = "empty"  # TEI's error_type for a rerank request without texts
    NO_ACTIVE_MODEL = "no_active_model"
    MODEL_LOAD_FAILED = "model_load_failed"
    MODEL_NOT_READY = "model_not_ready"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_TIMEOUT = "backend_timeout"
    OVERLOADED = "overloaded"
    BACKEND_ERROR = "backend_error"
    INVALID_MODEL_OUTPUT = "invalid_model_output"
    NOT_THE_COORDINATOR = "not_the_coordinator"
    COORDINATOR_UNAVAILABLE = "coordinator_unavailable"
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    INSUFFICIENT_SCOPE = "insufficient_scope"


STATUS = {
    ErrorKind.INVALID_REQUEST: 422,
    ErrorKind.UNKNOWN_MODEL: 400,
    ErrorKind.MODEL_NOT_LOADED: 400,
    ErrorKind.INPUT_TOO_LONG: 400,
    ErrorKind.UNSUPPORTED_OPTION: 400,
    ErrorKind.EMPTY: 400,  # TEI's status for it
    ErrorKind.NO_ACTIVE_MODEL: 503,
    ErrorKind.MODEL_LOAD_FAILED: 503,
    ErrorKind.MODEL_NOT_READY: 503,
    ErrorKind.BACKEND_UNAVAILABLE: 503,
    ErrorKind.BACKEND_TIMEOUT: 504,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.BACKEND_ERROR: 500,
    ErrorKind.INVALID_MODEL_OUTPUT: 500,
    ErrorKind.NOT_THE_COORDINATOR: 409,  # a peer call that this gateway's role cannot take
    ErrorKind.COORDINATOR_UNAVAILABLE: 503,
    ErrorKind.MISSING_API_KEY: 401,
    ErrorKind.INVALID_API_KEY: 401,
    ErrorKind.INSUFFICIENT_SCOPE: 403,
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
    body["detail"] = message
    return body


def _request_field_names() -> frozenset[str]:
    models = [value for value in vars(protocol).values()
              if isinstance(value, type) and issubclass(value, BaseModel) and value is not BaseModel]
    fields = {name for model in models for field_name, info in model.model_fields.items()
              for name in (field_name, info.alias) if name}
    return frozenset(fields | {protocol.PRIORITY_HEADER})


FIELD_NAMES = _request_field_names()
"""Every field of the API's models, and the headers they read: the parts of a validation error's location
that name something."""


def field_path(location: tuple, unknown: bool = False) -> str:
    """pydantic's error location as the client wrote the body: `documents[0].text`.

    Locations also hold the names of union members and validators (`function-after[clean_text(), str]`,
    `RerankDocument`, a discriminator's tag); they name no part of the body and are left out. With
    `unknown` (an extra field that is not allowed) the last part is the client's own field name.
    """
    path = ""
    for index, part in enumerate(location):
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in FIELD_NAMES or (unknown and index == len(location) - 1 and part != "body"):
            path += f".{part}" if path else part
    return path or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        request.state.error_type = exc.kind.value  # the rejection reason in the metrics
        return JSONResponse(error_body(exc.kind, exc.message, exc.field), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.error_type = ErrorKind.INVALID_REQUEST.value
        errors = exc.errors()
        if errors[0].get("type") == "json_invalid":  # loc holds a character offset, not a field
            first = errors[0]
            message = f"body: invalid JSON at character {first['loc'][-1]} ({first.get('ctx', {}).get('error', '')})"
            return JSONResponse(error_body(ErrorKind.INVALID_REQUEST, message, "body"), status_code=422)
        # A value that fits no member of a union fails once per member; the deepest path is the specific
        # one (a document object without "text" fails as a string at documents[0] and for its missing
        # field at documents[0].text).
        paths = [field_path(error.get("loc", ()), unknown=error.get("type") == "extra_forbidden") for error in errors]
        deepest = max(range(len(errors)), key=lambda i: (paths[i].count(".") + paths[i].count("["), -i))
        field = paths[deepest]
        message = f"{field}: {errors[deepest].get('msg', 'invalid value')}"
        return JSONResponse(error_body(ErrorKind.INVALID_REQUEST, message, field), status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own refusals (unparsable body, unknown path, wrong method) in the same shape.
        field = "body" if exc.status_code in (400, 413, 415) else None
        body = error_body(ErrorKind.INVALID_REQUEST, str(exc.detail), field)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))
