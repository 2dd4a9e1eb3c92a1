"""The gateway application factory: settings in, FastAPI app out, with a
lifespan that connects to Triton and activates the start-up model."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from gateway.errors import install_error_handlers
from gateway.guards import RequestGuards
from gateway.model_manager import ModelManager
from gateway.routes import router
from gateway.service import RerankService
from gateway.settings import GatewaySettings
from gateway.triton import TritonBackend


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        triton = TritonBackend(settings.triton_url, settings.request_timeout_s, settings.model_load_timeout_s)
        models = ModelManager(triton, settings)
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
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        RequestGuards,
        max_request_bytes=settings.max_request_bytes,
        max_concurrent_requests=settings.max_concurrent_requests,
    )

    @app.middleware("http")
    async def timing_headers(request: Request, call_next):
        # TEI's header names, in milliseconds; load tests read them per request.
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["x-total-time"] = f"{(time.perf_counter() - started) * 1000:.3f}"
        timing = getattr(request.state, "timing", None)
        if timing is not None and timing.inference_s is not None:
            response.headers["x-queue-time"] = f"{timing.queue_s * 1000:.3f}"
            response.headers["x-inference-time"] = f"{timing.inference_s * 1000:.3f}"
        return response

    return app
