"""The gateway application factory: settings in, FastAPI app out, with a
lifespan that connects to Triton and activates the start-up model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.docs import install_offline_docs
from gateway.errors import ErrorKind, install_error_handlers
from gateway.guards import RequestGuards
from gateway.metrics import GatewayMetrics
from gateway.model_manager import ModelManager
from gateway.observer import REFUSAL_REASONS, RequestObserver
from gateway.routes import router
from gateway.service import RerankService
from gateway.settings import GatewaySettings
from gateway.triton import TritonBackend


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
            # Waited for, so no health check of the watcher is still in flight on the gRPC channel when it
            # closes (its completion would reach an event loop that is gone).
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await triton.close()

    app = FastAPI(
        title="Reranker",
        version="0.1.0",
        summary="Scores (query, document) pairs with Triton-served rerankers; switch models at run time.",
        lifespan=lifespan,
        docs_url=None,  # served from installed files by install_offline_docs, not from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
    install_offline_docs(app)
    install_error_handlers(app)
    app.add_middleware(
        RequestGuards,
        max_request_bytes=settings.max_request_bytes,
        max_concurrent_requests=settings.max_concurrent_requests,
        in_flight_gauge=metrics.in_flight,
    )
    app.add_middleware(RequestObserver, metrics=metrics)  # outermost: its time spans the guards too

    return app
