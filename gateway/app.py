"""The gateway application factory: settings in, FastAPI app out, with a
lifespan that finds the Triton replicas and activates the start-up model -
by itself, or as one gateway of a cluster (gateway.cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway import discovery
from gateway.cluster import Cluster, HttpPeers
from gateway.docs import install_offline_docs
from gateway.errors import ErrorKind, install_error_handlers
from gateway.guards import RequestGuards
from gateway.metrics import GatewayMetrics
from gateway.model_manager import ModelManager
from gateway.observer import REFUSAL_REASONS, RequestObserver
from gateway.pool import TritonPool
from gateway.routes import internal, router
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
        triton = TritonPool(
            discovery.parse_targets(settings.triton_url),
            lambda address: TritonBackend(address, settings.request_timeout_s, settings.model_load_timeout_s),
            settings.request_timeout_s, settings.triton_watch_interval_s, settings.triton_resolve_interval_s,
            # In a cluster only the coordinator loads models, so Triton never loads one twice.
            manages_models=not settings.in_cluster or settings.is_coordinator,
        )
        await triton.start()
        models = ModelManager(triton, settings, metrics)
        cluster = None
        if settings.in_cluster:
            cluster = Cluster(models, triton, settings,
                              HttpPeers(settings.peer_api_key.get_secret_value(), settings.peer_timeout_s))
        app.state.service = RerankService(triton, models, settings, cluster)
        if cluster is None:
            await models.start()
            background = asyncio.create_task(models.watch(settings.triton_watch_interval_s))
        else:
            await cluster.start()
            background = asyncio.create_task(cluster.run())
        try:
            yield
        finally:
            background.cancel()
            # Waited for, so no health check of the watcher is still in flight on the gRPC channel when it
            # closes (its completion would reach an event loop that is gone).
            with contextlib.suppress(asyncio.CancelledError):
                await background
            if cluster is not None:
                await cluster.close()
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
    app.include_router(internal)
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
