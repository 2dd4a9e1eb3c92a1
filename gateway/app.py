"""The gateway application factory: settings in, FastAPI app out, with a
lifespan that finds the Triton replicas and activates the start-up model -
by itself, or as one gateway of a cluster (gateway.fleet.cluster).

Middlewares, outermost first: FastAPI's tracing (when on), the observer
(timing headers, trace id, metrics, access log), the API key check, then the
guards (media type, body size, in-flight bound), so that a request without a
valid key is refused before its body is read or counted in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.trace import TracerProvider

from gateway.api import auth
from gateway.fleet import discovery
from gateway.fleet.cluster import Cluster, HttpPeers
from gateway.api.docs import install_offline_docs
from gateway.errors import ErrorKind, install_error_handlers
from gateway.api.guards import RequestGuards
from gateway.metrics import GatewayMetrics
from gateway.serving.model_manager import ModelManager
from gateway.api.observer import REFUSAL_REASONS, RequestObserver
from gateway.fleet.pool import TritonPool
from gateway.api.routes import router
from gateway.serving.cache import ScoreCache
from gateway.serving.coalescer import Coalescer
from gateway.serving.service import RerankService
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from gateway.serving.triton import TritonBackend

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """`tracer_provider`: trace with this provider instead of one built from the settings (tests)."""
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    metrics.start_at_zero([kind.value for kind in ErrorKind] + list(REFUSAL_REASONS.values()))
    worker = "" if settings.worker_index is None else f"worker {settings.worker_index} "
    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {worker}%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per call between gateways: every poll
    keys = auth.KeyRing.from_settings(settings)  # a malformed key file stops the start here
    policy = auth.AccessPolicy(settings)
    tracing = Tracing(tracer_provider) if tracer_provider is not None else Tracing.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not keys:
            log.warning("no API keys configured (RERANKER_API_KEYS_FILE, RERANKER_API_KEYS): every route is open "
                        "to whoever reaches this port, /switch_model included")
        else:
            log.info("%d API keys loaded; routes need a key with their scope", len(keys.keys))

        def replica(address: str) -> TritonBackend:
            with tracing.instrumented_grpc():  # the channel gets the interceptors that carry traceparent
                return TritonBackend(address, settings.request_timeout_s, settings.model_load_timeout_s)

        triton = TritonPool(
            discovery.parse_targets(settings.triton_url), replica,
            settings.request_timeout_s, settings.triton_watch_interval_s, settings.triton_resolve_interval_s,
            # In a cluster only the coordinator loads models, so Triton never loads one twice.
            manages_models=not settings.in_cluster or settings.is_coordinator,
        )
        await triton.start()
        models = ModelManager(triton, settings, metrics, tracing)
        cache = None
        if settings.cache_on:
            cache = ScoreCache(settings, metrics)
            triton.on_model_change = models.on_change = cache.fingerprints.forget
            await cache.start()
        cluster = None
        if settings.in_cluster:
            cluster = Cluster(models, triton, settings,
                              HttpPeers(settings.peer_api_key.get_secret_value(), settings.peer_timeout_s))
        scorer = triton
        if settings.coalesce_max_rows:
            scorer = Coalescer(
                triton, lambda model: models.loaded[model].max_batch_size if model in models.loaded else 1,
                settings.request_timeout_s, settings.coalesce_max_rows, settings.coalesce_max_in_flight,
                settings.coalesce_window_ms / 1000, observe=metrics.coalesced.observe,
            )
        app.state.service = RerankService(scorer, models, settings, cluster, cache)
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
            if cache is not None:
                await cache.close()
            if tracer_provider is None:
                tracing.shutdown()

    app = FastAPI(
        title="Reranker",
        version="0.1.0",
        summary="Scores (query, document) pairs with Triton-served rerankers; switch models at run time.",
        lifespan=lifespan,
        docs_url=None,  # served from installed files by install_offline_docs, not from a CDN
        redoc_url=None,
        telemetry=tracing.fastapi_config(),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
    install_offline_docs(app)
    auth.mark_public(app)
    auth.check_declared(app)
    install_error_handlers(app)
    app.add_middleware(
        RequestGuards,
        max_request_bytes=settings.max_request_bytes,
        max_concurrent_requests=settings.max_concurrent_requests,
        in_flight_gauge=metrics.in_flight,
    )
    if keys:
        app.add_middleware(auth.Authenticator, keys=keys, policy=policy)
        auth.document_security(app, policy)
    # Outermost, so its time spans the rest.
    app.add_middleware(RequestObserver, metrics=metrics, tracing=tracing.enabled, log_access=settings.access_log)

    return app
