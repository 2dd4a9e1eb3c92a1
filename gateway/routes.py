"""HTTP routes: parse, call the service, answer. Nothing else lives here.

`internal` holds the calls between gateways (gateway.cluster), all under
/internal/: out of the public API and its schema, and guarded by the peer key."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from gateway.cluster import INTERNAL_PREFIX
from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import CONTENT_TYPE, RequestRecord
from gateway.protocol import (
    ActivateRequest,
    ErrorResponse,
    HealthResponse,
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
from gateway.service import RerankService

router = APIRouter(
    responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}
)


# Dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a
# thread hop per dependency on every request.
async def service(request: Request) -> RerankService:
    return request.app.state.service


async def record(request: Request) -> RequestRecord:
    request.state.record = RequestRecord()  # read back after the response, for headers and metrics
    return request.state.record


@router.post("/rerank", response_model=RerankPairResponse | RerankResponse | list[TeiRank],
             response_model_exclude_none=True, tags=["rerank"])
async def rerank(body: RerankAnyRequest, svc: RerankService = Depends(service), stats: RequestRecord = Depends(record)):
    """The body decides the form: the seed's `{query, document}` -> `{score}`; TEI's `{query, texts}` -> TEI's
    sorted list of `{index, score, text?}`; the list form (`documents`) answers as /v1/rerank."""
    if isinstance(body, RerankPairRequest):
        return RerankPairResponse(score=await svc.score_pair(body.query, body.document, stats))
    if isinstance(body, TeiRerankRequest):
        return await svc.rerank_tei(body, stats)
    return await svc.rerank(body, stats)


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"])
async def rerank_documents(
    body: RerankRequest, svc: RerankService = Depends(service), stats: RequestRecord = Depends(record)
) -> RerankResponse:
    """Cohere v1 and v2, Jina, vLLM and Infinity rerank: one query, many documents, results sorted by relevance."""
    return await svc.rerank(body, stats)


@router.post("/v1/score", response_model=ScoreResponse, tags=["rerank"])
@router.post("/score", response_model=ScoreResponse, tags=["rerank"])
async def score(body: ScoreRequest, svc: RerankService = Depends(service), stats: RequestRecord = Depends(record)):
    """Scores of arbitrary pairs, in request order (vLLM's text_1/text_2, queries/documents or items, data_1/data_2)."""
    return await svc.score(body, stats)


@router.post("/switch_model", response_model=SwitchModelResponse, tags=["models"])
async def switch_model(body: SwitchModelRequest, svc: RerankService = Depends(service)) -> SwitchModelResponse:
    """Load a model, make it active once READY, then unload the previous one (unless keep_loaded)."""
    return await svc.switch_model(body.model_name, body.keep_loaded)


@router.get("/models", response_model=ModelsResponse, tags=["models"])
async def models(svc: RerankService = Depends(service)) -> ModelsResponse:
    return await svc.list_models()


@router.get("/v1/models", response_model=OpenAIModelList, tags=["models"])
async def openai_models(svc: RerankService = Depends(service)) -> OpenAIModelList:
    """The loaded models in OpenAI's list shape, as vLLM answers it."""
    return await svc.openai_models()


@router.get("/health", response_model=HealthResponse, tags=["health"])
async def health(svc: RerankService = Depends(service)) -> HealthResponse:
    """Liveness: answers 200 while the gateway runs, with Triton's state in the body."""
    return await svc.health()


@router.get("/health/ready", response_model=HealthResponse, tags=["health"])
async def ready(svc: RerankService = Depends(service)):
    """Readiness: 200 only when Triton is live and the active model is READY."""
    report = await svc.health()
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this gateway (Triton exports its own on its metrics port)."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


async def peer_key(request: Request) -> None:
    """Calls between gateways carry RERANKER_PEER_API_KEY when one is set."""
    expected = request.app.state.settings.peer_api_key.get_secret_value()
    if not expected:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise GatewayError(ErrorKind.UNAUTHORIZED, "calls to /internal/ need 'Authorization: Bearer' with the "
                                                   "peer key (RERANKER_PEER_API_KEY)")


internal = APIRouter(prefix=INTERNAL_PREFIX, dependencies=[Depends(peer_key)], include_in_schema=False)


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
