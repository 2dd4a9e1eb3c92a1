"""API keys and their scopes: who may call which route.

Keys come from the file named by RERANKER_API_KEYS_FILE and from
RERANKER_API_KEYS, in one format (README, Security):

    # comment lines, and comments after a space
    <key>  <scope>[,<scope>...]  [<name>]

`<key>` is the secret a client sends as `Authorization: Bearer <key>`, or
`sha256:<64 hex digits>`, its SHA-256, so that the file need not hold the
secret. `<name>` names the key in the access log (the key itself is never
logged). In RERANKER_API_KEYS, entries are separated by newlines or `;`.

Scopes: `score` (scoring and model listing), `admin` (whatever changes
state: switching models, peer-only routes), `metrics` (GET /metrics, where
RERANKER_METRICS_REQUIRE_KEY asks for a key). `admin` grants the other two:
an operator who may switch models may also check the result.

Each route declares the scope it needs through the router it is on
(`scoped_router` in gateway/api/routes.py), as an attribute of its route class,
so a route added to a router inherits the router's scope. `check_declared`
refuses an app with a route that declares none, so nothing is open by
omission. `Authenticator` checks the key as a plain ASGI middleware, before
the guards read a byte of the body or count the request as in flight: an
unauthenticated client can neither fill the in-flight bound nor make the
gateway parse its body.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Iterable, Iterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope as AsgiScope, Send

from gateway.errors import STATUS, ErrorKind, error_body
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


class Scope(str, Enum):
    SCORE = "score"
    ADMIN = "admin"
    METRICS = "metrics"


GRANTS: dict[Scope, frozenset[Scope]] = {
    Scope.SCORE: frozenset({Scope.SCORE}),
    Scope.METRICS: frozenset({Scope.METRICS}),
    Scope.ADMIN: frozenset(Scope),
}
"""What holding each scope allows."""

MIN_KEY_LENGTH = 16
"""Shorter secrets are refused at start-up: they can be guessed."""

REALM = "reranker"
ROUTE_KEY = "reranker.route"
"""Where the middlewares keep the route a request matched (scope key), so it is matched once."""


class KeyConfigError(ValueError):
    """A key file or RERANKER_API_KEYS entry that cannot be read; the message names where and why."""


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # SHA-256 of the secret
    scopes: frozenset[Scope]  # granted, `admin` expanded

    def allows(self, needed: Scope) -> bool:
        return needed in self.scopes


_COMMENT = re.compile(r"(^|\s)#.*$")
_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")


def parse_keys(text: str, source: str, separators: str = "\n") -> list[ApiKey]:
    """Entries of `text`, one per line (or per `separators` character); `source` names it in errors."""
    keys = []
    for number, line in enumerate(re.split(f"[{re.escape(separators)}]", text), start=1):
        fields = _COMMENT.sub("", line).split()
        if not fields:
            continue
        where = f"{source}, entry {number}"
        if len(fields) not in (2, 3):
            raise KeyConfigError(f"{where}: expected '<key> <scopes> [<name>]', got {len(fields)} fields")
        secret, scope_list = fields[0], fields[1]
        hashed = _HASHED.fullmatch(secret)
        if hashed:
            digest = bytes.fromhex(hashed[1])
        elif secret.lower().startswith("sha256:"):
            raise KeyConfigError(f"{where}: a sha256: key must be 64 hex digits")
        elif len(secret) < MIN_KEY_LENGTH:
            raise KeyConfigError(f"{where}: the key is shorter than {MIN_KEY_LENGTH} characters")
        else:
            digest = hashlib.sha256(secret.encode()).digest()
        granted: set[Scope] = set()
        for name in scope_list.split(","):
            try:
                granted |= GRANTS[Scope(name.strip().lower())]
            except ValueError:
                valid = ", ".join(s.value for s in Scope)
                raise KeyConfigError(f"{where}: unknown scope {name!r} (valid: {valid})") from None
        keys.append(ApiKey(fields[2] if len(fields) == 3 else where, digest, frozenset(granted)))
    return keys


class KeyRing:
    """The configured keys, looked up in constant time: the presented secret is hashed and compared with
    every stored digest by `hmac.compare_digest`, all of them whatever matches, so neither the secret's
    bytes nor which entry it is show in the time taken."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = tuple(keys)
        seen: dict[bytes, str] = {}
        for key in self.keys:
            if key.digest in seen:
                raise KeyConfigError(f"{key.name}: the same key as {seen[key.digest]}")
            seen[key.digest] = key.name

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> "KeyRing":
        keys = []
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise KeyConfigError(f"RERANKER_API_KEYS_FILE {path}: {exc.strerror or exc}") from None
            keys += parse_keys(text, str(path))
        if settings.api_keys is not None:
            keys += parse_keys(settings.api_keys.get_secret_value(), "RERANKER_API_KEYS", separators="\n;")
        return cls(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def find(self, secret: str) -> ApiKey | None:
        digest = hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(key.digest, digest):
                found = key
        return found


# --- what each route needs ----------------------------------------------------------------------

class _Undeclared:
    def __repr__(self) -> str:
        return "undeclared"


UNDECLARED = _Undeclared()
PUBLIC = None
"""The declared scope of a route anyone may call (probes)."""


def scoped_route_class(scope: Scope | None) -> type[APIRoute]:
    """An APIRoute subclass whose routes need `scope` (None: public). FastAPI keeps a route's class when
    a router is included in another, so the declaration travels with the route."""
    label = scope.value.capitalize() if scope else "Public"
    return type(f"{label}Route", (APIRoute,), {"required_scope": scope})


def declared_scope(route) -> Scope | None | _Undeclared:
    return getattr(route, "required_scope", UNDECLARED)


def mark_public(app: FastAPI) -> None:
    """FastAPI's own documentation routes (the OpenAPI document, Swagger UI, ReDoc) are public: clients
    and the fuzz tests read the schema without a key, as TEI's and vLLM's serve theirs."""
    docs = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url} - {None}
    for route in app.routes:
        if getattr(route, "path", None) in docs:
            route.required_scope = PUBLIC


def flat_routes(routes) -> Iterator[tuple[object, object]]:
    """(route as matched, route as declared) for every route under `routes`. FastAPI 0.16x keeps an included
    router as one entry whose `effective_route_contexts()` yields its routes, nested inclusions too, with
    their effective (prefixed) paths; the scope is an attribute of the original route's class."""
    for route in routes:
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            yield route, route
        else:
            for context in contexts():
                yield context, context.original_route


def check_declared(app: FastAPI) -> None:
    """Refuse an app with a route that declares no scope (see the module's docstring)."""
    undeclared = [getattr(matched, "path", repr(matched)) for matched, declared in flat_routes(app.routes)
                  if declared_scope(declared) is UNDECLARED]
    if undeclared:
        raise RuntimeError(f"routes without a declared scope (put them on a scoped router): {undeclared}")


class AccessPolicy:
    """The scope a request needs, from its route's declaration and the settings."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.metrics_require_key = settings.metrics_require_key

    def needed(self, route) -> Scope | None:
        scope = declared_scope(route)
        if scope is UNDECLARED:
            return Scope.ADMIN  # fail closed; check_declared keeps this from happening at all
        if scope is Scope.METRICS and not self.metrics_require_key:
            return PUBLIC
        return scope


FLAT_ROUTES_ATTRIBUTE = "_reranker_flat_routes"


def matched_route(scope: AsgiScope):
    """The (declaring) route that takes this method on this path, or None (the router then answers 404 or
    405); matched once per request, kept in the scope for the next middleware."""
    if ROUTE_KEY in scope:
        return scope[ROUTE_KEY]
    router = getattr(scope.get("app"), "router", None)
    found = None
    if router is not None:
        routes = getattr(router, FLAT_ROUTES_ATTRIBUTE, None)
        if routes is None:  # the routes are final once requests come
            routes = list(flat_routes(router.routes))
            setattr(router, FLAT_ROUTES_ATTRIBUTE, routes)
        found = next((declared for matched, declared in routes if matched.matches(scope)[0] is Match.FULL), None)
    scope[ROUTE_KEY] = found
    return found


# --- the check ------------------------------------------------------------------------------------

class Authenticator:
    """Plain ASGI: a request to a route that needs a scope must carry `Authorization: Bearer <key>` of a
    key that grants it; else 401 (no key, or an unknown one) with `WWW-Authenticate: Bearer`, or 403 (the
    key lacks the scope), in the gateway's error shape. Requests no route takes pass on to the router's
    404 or 405. With no keys configured it is not installed at all."""

    def __init__(self, app: ASGIApp, keys: KeyRing, policy: AccessPolicy) -> None:
        self.app = app
        self.keys = keys
        self.policy = policy

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = matched_route(scope)
        needed = None if route is None else self.policy.needed(route)
        if needed is None:
            return await self.app(scope, receive, send)
        secret = _bearer(scope)
        if secret is None:
            return await _refuse(scope, receive, send, ErrorKind.MISSING_API_KEY,
                                 "an API key is required: send 'Authorization: Bearer <key>'",
                                 f'Bearer realm="{REALM}"')
        key = self.keys.find(secret)
        if key is None:
            return await _refuse(scope, receive, send, ErrorKind.INVALID_API_KEY, "the API key is not valid",
                                 f'Bearer realm="{REALM}", error="invalid_token"')
        scope.setdefault("state", {})["api_key"] = key.name
        if not key.allows(needed):
            return await _refuse(scope, receive, send, ErrorKind.INSUFFICIENT_SCOPE,
                                 f"this API key lacks the '{needed.value}' scope that {scope['path']} needs",
                                 f'Bearer realm="{REALM}", error="insufficient_scope", scope="{needed.value}"')
        return await self.app(scope, receive, send)


def _bearer(scope: AsgiScope) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header (the scheme is case-insensitive, RFC 7235);
    None when there is no such header."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


async def _refuse(scope: AsgiScope, receive: Receive, send: Send, kind: ErrorKind, message: str,
                  challenge: str) -> None:
    scope.setdefault("state", {})["error_type"] = kind.value  # the rejection reason in the metrics
    response = JSONResponse(error_body(kind, message), status_code=STATUS[kind],
                            headers={"www-authenticate": challenge})
    await response(scope, receive, send)


# --- the OpenAPI document ---------------------------------------------------------------------------

SECURITY_SCHEME = "apiKey"


def document_security(app: FastAPI, policy: AccessPolicy) -> None:
    """With keys configured, the OpenAPI document says which operations need a bearer key, which scope,
    and that they may answer 401 and 403 (clients and the fuzz tests read it)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "http", "scheme": "bearer",
            "description": "An API key: 'Authorization: Bearer <key>'. Its scopes decide which routes it may call.",
        }
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for matched, declared in flat_routes(app.routes):
            needed = policy.needed(declared) if isinstance(declared, APIRoute) else None
            if needed is None or not getattr(matched, "include_in_schema", True):
                continue
            for method in matched.methods:
                operation = schema["paths"][matched.path_format][method.lower()]
                operation["security"] = [{SECURITY_SCHEME: []}]
                operation["description"] = (operation.get("description", "") + f"\n\nNeeds an API key with the "
                                            f"`{needed.value}` scope.").strip()
                responses = operation.setdefault("responses", {})
                responses["401"] = {"description": "No API key, or an unknown one.", **error}
                responses["403"] = {"description": f"The API key lacks the {needed.value} scope.", **error}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
