"""The gateway application factory: settings in, FastAPI app out, with a
lifespan that connects to Triton and activates the start-up model.

Middlewares, outermost first: FastAPI's tracing (when on), the observer
(timing headers, trace id, metrics, access log), the API key check, then the
guards (media type, body size, in-flight bound), so that a request without a
valid key is refused before its body is read or counted in flight.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.trace import TracerProvider

from gateway import auth
from gateway.errors import ErrorKind, install_error_handlers
from gateway.guards import RequestGuards
from gateway.metrics import GatewayMetrics
from gateway.model_manager import ModelManager
from gateway.observer import REFUSAL_REASONS, RequestObserver
from gateway.routes import router
from gateway.service import RerankService
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from gateway.triton import TritonBackend

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """`tracer_provider`: trace with this provider instead of one built from the settings (tests)."""
    settings = settings or GatewaySettings()
    metrics = GatewayMetrics()
    metrics.start_at_zero([kind.value for kind in ErrorKind] + list(REFUSAL_REASONS.values()))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        with tracing.instrumented_grpc():
            triton = TritonBackend(settings.triton_url, settings.request_timeout_s, settings.model_load_timeout_s)
        models = ModelManager(triton, settings, metrics, tracing)
        app.state.service = RerankService(triton, models, settings)
        await models.start()
        watcher = asyncio.create_task(models.watch(settings.triton_watch_interval_s))
        try:
            yield
        finally:
            watcher.cancel()
            await triton.close()
            if tracer_provider is None:
                tracing.shutdown()

    app = FastAPI(
        title="Reranker",
        version="0.1.0",
        summary="Scores (query, document) pairs with Triton-served rerankers; switch models at run time.",
        lifespan=lifespan,
        telemetry=tracing.fastapi_config(),
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.include_router(router)
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
    app.add_middleware(RequestObserver, metrics=metrics, tracing=tracing.enabled)  # its time spans the rest

    return app
