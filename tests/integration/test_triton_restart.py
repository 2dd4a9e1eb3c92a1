"""Triton dies mid-service and comes back: the gateway answers 503 at once
while it is gone, reports not ready, and recovers by itself - reloading its
models - without a restart."""

from __future__ import annotations

import os
import signal
import time

import anyio
import httpx
import pytest

from gateway.settings import GatewaySettings
from tests import stack
from tests.app.conftest import in_process

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

BODY = {"query": "what do pandas eat?", "documents": ["bamboo", "stock prices"]}


async def test_gateway_recovers_when_triton_comes_back(repository, models_dir, tmp_path):
    triton = stack.start_triton(repository, models_dir, tmp_path / "triton-1.log")
    ports = (triton.ports["http"], triton.ports["grpc"], triton.ports["metrics"])
    settings = GatewaySettings(triton_url=f"127.0.0.1:{ports[1]}", default_model="minilm",
                               triton_watch_interval_s=0.2, request_timeout_s=10)
    try:
        async with in_process(settings) as api:
            before = (await api.post("/v1/rerank", json=BODY)).json()["results"]

            os.killpg(triton.process.pid, signal.SIGKILL)  # tritonserver and its model stubs
            triton.process.wait()
            started = time.monotonic()
            down = await api.post("/v1/rerank", json=BODY)
            assert down.status_code == 503 and down.json()["error_type"] == "backend_unavailable"
            assert time.monotonic() - started < 5  # at once, not after a timeout
            assert (await api.get("/health/ready")).status_code == 503

            triton = stack.start_triton(repository, models_dir, tmp_path / "triton-2.log", ports=ports)
            deadline = time.monotonic() + 120
            while (await api.get("/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "the gateway did not recover"
                await anyio.sleep(0.5)
            after = await api.post("/v1/rerank", json=BODY)
            assert after.status_code == 200 and after.json()["results"] == before
            index = httpx.post(f"{triton.url()}/v2/repository/index", timeout=5).json()
            assert {"name": "minilm-l6", "state": "READY"}.items() <= next(
                m for m in index if m["name"] == "minilm-l6").items()  # reloaded by the gateway itself
    finally:
        stack.stop(triton.process)
