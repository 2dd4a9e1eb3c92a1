"""HTTP routes: parse, call the service, answer. Nothing else lives here.

Every route sits on a router of the scope it needs (gateway/api/auth.py): a route
added to `scored`, `admin` or `public` is protected (or open) like its
neighbours, and the app refuses to start with a route on none of them.
Peer-only routes (`internal`, under /internal/) are `admin`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response

from gateway.api.auth import PUBLIC, Scope, scoped_route_class
from gateway.fleet.cluster import INTERNAL_PREFIX
from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import CONTENT_TYPE, RequestRecord
from gateway.api.protocol import (
    PRIORITY_HEADER,
    ActivateRequest,
    ErrorResponse,
    HealthResponse,
    InvocationRequest,
    ModelsResponse,
    OpenAIModelList,
    RerankAnyRequest,
    RerankPairRequest,
    RerankPairResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    SwitchModelRequest,
    SwitchModelResponse,
    TeiRank,
    TeiRerankRequest,
)
from gateway.serving.cache import CachePolicy
from gateway.serving.service import RerankService

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


@dataclass(frozen=True)
class ScoringCall:
    """What a scoring route needs besides its body: one dependency, not three (each costs FastAPI a resolution
    step on every request)."""

    service: RerankService
    record: RequestRecord  # read back after the response, for headers and metrics
    header_priority: int | None

    def priority(self, body_priority: int | None) -> int:
        """The body's priority, else the header's, else 0."""
        return body_priority if body_priority is not None else (self.header_priority or 0)


async def scoring_call(
    request: Request,
    priority: int | None = Header(None, alias=PRIORITY_HEADER, ge=-(2**63), le=2**63 - 1,
                                  description="The request's priority when the body has none (see `priority`)."),
) -> ScoringCall:
    # The record carries the key's name and Cache-Control in.
    request.state.record = RequestRecord(api_key=getattr(request.state, "api_key", None),
                                         cache=CachePolicy.from_header(request.headers.get("cache-control")))
    return ScoringCall(request.app.state.service, request.state.record, priority)


@scored.post("/rerank", response_model=RerankPairResponse | RerankResponse | list[TeiRank],
             response_model_exclude_none=True, tags=["rerank"])
async def rerank(body: RerankAnyRequest, call: ScoringCall = Depends(scoring_call)):
    """The body decides the form: the seed's `{query, document}` -> `{score}`; TEI's `{query, texts}` -> TEI's
    sorted list of `{index, score, text?}`; the list form (`documents`) answers as /v1/rerank."""
    svc, stats, priority = call.service, call.record, call.priority(getattr(body, "priority", None))
    if isinstance(body, RerankPairRequest):
        return RerankPairResponse(score=await svc.score_pair(body.query, body.document, stats, priority))
    if isinstance(body, TeiRerankRequest):
        return await svc.rerank_tei(body, stats, priority)
    return await svc.rerank(body, stats, priority)


@scored.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
@scored.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
async def rerank_documents(body: RerankRequest, call: ScoringCall = Depends(scoring_call)) -> RerankResponse:
    """Cohere v1 and v2, Jina, vLLM and Infinity rerank: one query, many documents, results sorted by relevance."""
    return await call.service.rerank(body, call.record, call.priority(body.priority))


@scored.post("/v1/score", response_model=ScoreResponse, response_model_exclude_none=True, tags=["rerank"])
@scored.post("/score", response_model=ScoreResponse, response_model_exclude_none=True, tags=["rerank"])
async def score(body: ScoreRequest, call: ScoringCall = Depends(scoring_call)):
    """Scores of arbitrary pairs, in request order (vLLM's text_1/text_2, queries/documents or items, data_1/data_2)."""
    return await call.service.score(body, call.record, call.priority(body.priority))


@scored.post("/invocations", response_model=RerankResponse | ScoreResponse, response_model_exclude_none=True,
             tags=["rerank"])
async def invocations(body: InvocationRequest, call: ScoringCall = Depends(scoring_call)):
    """SageMaker's route, as vLLM serves it: a rerank body (`query`, `documents`) answers as /v1/rerank, any other
    body as /score."""
    priority = call.priority(body.priority)
    if isinstance(body, RerankRequest):
        return await call.service.rerank(body, call.record, priority)
    return await call.service.score(body, call.record, priority)


@admin.post("/switch_model", response_model=SwitchModelResponse, tags=["models"])
async def switch_model(body: SwitchModelRequest, svc: RerankService = Depends(service)) -> SwitchModelResponse:
    """Load a model, make it active once READY, then unload the previous one (unless keep_loaded)."""
    return await svc.switch_model(body.model_name, body.keep_loaded)


@scored.get("/models", response_model=ModelsResponse, tags=["models"])
async def models(svc: RerankService = Depends(service)) -> ModelsResponse:
    return await svc.list_models()


@scored.get("/v1/models", response_model=OpenAIModelList, tags=["models"])
async def openai_models(svc: RerankService = Depends(service)) -> OpenAIModelList:
    """The loaded models in OpenAI's list shape, as vLLM answers it."""
    return await svc.openai_models()


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


# Calls between gateways (gateway.fleet.cluster): admin only, out of the public API and its schema. A gateway
# sends RERANKER_PEER_API_KEY, which must be an admin key of the others when keys are configured.
internal = APIRouter(prefix=INTERNAL_PREFIX, route_class=scoped_route_class(Scope.ADMIN), include_in_schema=False)


def _cluster(svc: RerankService):
    if svc.cluster is None:
        raise GatewayError(ErrorKind.NOT_THE_COORDINATOR, "this gateway is not part of a cluster "
                                                          "(RERANKER_SWITCH_COORDINATOR is empty)")
    return svc.cluster


@internal.get("/cluster")
async def cluster_state(svc: RerankService = Depends(service)) -> dict:
    """This gateway's view of the cluster: the state it serves by, its role, its Triton replicas."""
    if svc.cluster is None:
        return {"role": "alone", "epoch": None, "generation": 0, "active": svc.models.active,
                "loaded": sorted(svc.models.loaded), "serving": svc.models.active,
                "replicas": svc.triton.describe()}
    return svc.cluster.describe()


@internal.post("/activate")
async def activate(body: ActivateRequest, svc: RerankService = Depends(service)) -> dict:
    """From the coordinator: make its new state's model active here, drain the models that leave, answer."""
    return await _cluster(svc).on_activate(body.model_dump())


@internal.post("/switch", response_model=SwitchModelResponse)
async def forwarded_switch(body: SwitchModelRequest, svc: RerankService = Depends(service)) -> SwitchModelResponse:
    """A /switch_model that reached another gateway; only the coordinator takes it."""
    _cluster(svc)
    return await svc.switch_model(body.model_name, body.keep_loaded, forwarded=True)


router = APIRouter()
for scoped in (scored, admin, metrics_scope, public, internal):
    router.include_router(scoped)
