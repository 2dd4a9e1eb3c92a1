"""HTTP routes: parse, call the service, answer. Nothing else lives here."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from gateway.protocol import (
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
    RerankPairRequest,
    RerankPairResponse,
    SwitchModelRequest,
    SwitchModelResponse,
)
from gateway.service import RerankService

router = APIRouter(responses={422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})


def service(request: Request) -> RerankService:
    return request.app.state.service


@router.post("/rerank", response_model=RerankPairResponse, tags=["rerank"])
async def rerank(body: RerankPairRequest, svc: RerankService = Depends(service)) -> RerankPairResponse:
    """Score one (query, document) pair with the active model."""
    return RerankPairResponse(score=await svc.score_pair(body.query, body.document))


@router.post("/switch_model", response_model=SwitchModelResponse, tags=["models"],
             responses={400: {"model": ErrorResponse}})
async def switch_model(body: SwitchModelRequest, svc: RerankService = Depends(service)) -> SwitchModelResponse:
    """Load a model, make it active once READY, then unload the previous one."""
    return await svc.switch_model(body.model_name)


@router.get("/models", response_model=ModelsResponse, tags=["models"])
async def models(svc: RerankService = Depends(service)) -> ModelsResponse:
    return await svc.list_models()


@router.get("/health", response_model=HealthResponse, tags=["health"])
async def health(svc: RerankService = Depends(service)) -> HealthResponse:
    """Liveness: answers 200 while the gateway runs, with Triton's state in the body."""
    return await svc.health()


@router.get("/health/ready", response_model=HealthResponse, tags=["health"])
async def ready(svc: RerankService = Depends(service)):
    """Readiness: 200 only when Triton is live and the active model is READY."""
    report = await svc.health()
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)
