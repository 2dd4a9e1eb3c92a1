"""The in-process gateway: the real FastAPI app, its lifespan run for real,
driven through `httpx.ASGITransport` against the session's real Triton."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings


@contextlib.asynccontextmanager
async def in_process(settings: GatewaySettings, tracer_provider=None):
    app = create_app(settings, tracer_provider=tracer_provider)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=300) as client:
            yield client


@pytest.fixture(scope="session", autouse=True)
async def one_event_loop(anyio_backend):
    """Holds anyio's test runner, and so its event loop, for the whole session: the runner closes its loop
    whenever no async test or fixture holds it, and grpc's asyncio poller, which is process-wide, can then
    deliver a finished call of one test's gateway to a loop that is gone (seen as "Event loop is closed"
    in the next test's set-up)."""
    yield


@pytest.fixture
async def api(triton):
    async with in_process(GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm")) as c:
        yield c
