"""HTTP routes: parse, call the service, answer. Nothing else lives here.

Every route sits on a router of the scope it needs (gateway/auth.py): a route
added to `scored`, `admin` or `public` is protected (or open) like its
neighbours, and the app refuses to start with a route on none of them.
Peer-only routes under /internal/ belong on `admin`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from gateway.auth import PUBLIC, Scope, scoped_route_class
from gateway.metrics import CONTENT_TYPE, RequestRecord
from gateway.protocol import (
    PRIORITY_HEADER,
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
    RerankAnyRequest,
    RerankPairRequest,
    RerankPairResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    SwitchModelRequest,
    SwitchModelResponse,
)
from gateway.service import RerankService

ERRORS = {400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def scoped_router(scope: Scope | None) -> APIRouter:
    return APIRouter(route_class=scoped_route_class(scope), responses=ERRORS)


scored = scoped_router(Scope.SCORE)  # scoring and reading what is served
admin = scoped_router(Scope.ADMIN)  # whatever changes the server's state
metrics_scope = scoped_router(Scope.METRICS)  # open unless RERANKER_METRICS_REQUIRE_KEY
public = scoped_router(PUBLIC)  # probes


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a
# thread hop per dependency on every request.
async def service(request: Request) -> RerankService:
    return request.app.state.service


async def record(request: Request) -> RequestRecord:
    request.state.record = RequestRecord()  # read back after the response, for headers and metrics
    return request.state.record


async def header_priority(
    priority: int | None = Header(None, alias=PRIORITY_HEADER, ge=-(2**63), le=2**63 - 1,
                                  description="The request's priority when the body has none (see `priority`)."),
) -> int | None:
    return priority


def _priority(body_priority: int | None, header: int | None) -> int:
    return body_priority if body_priority is not None else (header or 0)


@scored.post("/rerank", response_model=RerankPairResponse | RerankResponse, response_model_exclude_none=True,
             tags=["rerank"])
async def rerank(body: RerankAnyRequest, svc: RerankService = Depends(service), stats: RequestRecord = Depends(record),
                 header: int | None = Depends(header_priority)):
    """The seed's contract: one (query, document) pair -> {"score"}; the list form answers as /v1/rerank."""
    priority = _priority(body.priority, header)
    if isinstance(body, RerankPairRequest):
        return RerankPairResponse(score=await svc.score_pair(body.query, body.document, stats, priority))
    return await svc.rerank(body, stats, priority)


@scored.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
@scored.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
async def rerank_documents(
    body: RerankRequest, svc: RerankService = Depends(service), stats: RequestRecord = Depends(record),
    header: int | None = Depends(header_priority),
) -> RerankResponse:
    """Cohere v2 / Jina rerank: one query, many documents, results sorted by relevance."""
    return await svc.rerank(body, stats, _priority(body.priority, header))


@scored.post("/v1/score", response_model=ScoreResponse, tags=["rerank"])
async def score(body: ScoreRequest, svc: RerankService = Depends(service), stats: RequestRecord = Depends(record),
                header: int | None = Depends(header_priority)):
    """Scores of arbitrary pairs, in request order (vLLM's text_1/text_2, or queries/documents)."""
    return await svc.score(body, stats, _priority(body.priority, header))


@admin.post("/switch_model", response_model=SwitchModelResponse, tags=["models"])
async def switch_model(body: SwitchModelRequest, svc: RerankService = Depends(service)) -> SwitchModelResponse:
    """Load a model, make it active once READY, then unload the previous one (unless keep_loaded)."""
    return await svc.switch_model(body.model_name, body.keep_loaded)


@scored.get("/models", response_model=ModelsResponse, tags=["models"])
async def models(svc: RerankService = Depends(service)) -> ModelsResponse:
    return await svc.list_models()


@public.get("/health", response_model=HealthResponse, tags=["health"])
async def health(svc: RerankService = Depends(service)) -> HealthResponse:
    """Liveness: answers 200 while the gateway runs, with Triton's state in the body."""
    return await svc.health()


@public.get("/health/ready", response_model=HealthResponse, tags=["health"])
async def ready(svc: RerankService = Depends(service)):
    """Readiness: 200 only when Triton is live and the active model is READY."""
    report = await svc.health()
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


@metrics_scope.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this gateway (Triton exports its own on its metrics port)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


router = APIRouter()
for scoped in (scored, admin, metrics_scope, public):
    router.include_router(scoped)
