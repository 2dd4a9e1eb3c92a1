"""The gateway application factory: settings in, FastAPI app out, with a
lifespan that connects to Triton and activates the start-up model."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from gateway.errors import ErrorKind, install_error_handlers
from gateway.guards import RequestGuards
from gateway.metrics import GatewayMetrics
from gateway.model_manager import ModelManager
from gateway.routes import router
from gateway.service import RerankService
from gateway.settings import GatewaySettings
from gateway.triton import TritonBackend

# Refusals made before any handler runs (the guards, Starlette's router) carry no error type.
REFUSAL_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                   415: "unsupported_media_type", 429: "in_flight_limit"}


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    metrics.start_at_zero([kind.value for kind in ErrorKind] + list(REFUSAL_REASONS.values()))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        triton = TritonBackend(settings.triton_url, settings.request_timeout_s, settings.model_load_timeout_s)
        models = ModelManager(triton, settings, metrics)
        app.state.service = RerankService(triton, models, settings)
        await models.start()
        watcher = asyncio.create_task(models.watch(settings.triton_watch_interval_s))
        try:
            yield
        finally:
            watcher.cancel()
            await triton.close()

    app = FastAPI(
        title="Reranker",
        version="0.1.0",
        summary="Scores (query, document) pairs with Triton-served rerankers; switch models at run time.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        RequestGuards,
        max_request_bytes=settings.max_request_bytes,
        max_concurrent_requests=settings.max_concurrent_requests,
        in_flight_gauge=metrics.in_flight,
    )

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        # TEI's header names, in milliseconds; load tests read them per request.
        response.headers["x-total-time"] = f"{elapsed * 1000:.3f}"
        record = getattr(request.state, "record", None)
        if record is not None and record.inference_s is not None:
            response.headers["x-queue-time"] = f"{record.queue_s * 1000:.3f}"
            response.headers["x-inference-time"] = f"{record.inference_s * 1000:.3f}"
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        if path != "/metrics":
            rejection = None
            if response.status_code >= 400:
                fallback = REFUSAL_REASONS.get(response.status_code, f"http_{response.status_code}")
                rejection = getattr(request.state, "error_type", None) or fallback
            metrics.observe(path, response.status_code, elapsed, record, rejection)
        return response

    return app
