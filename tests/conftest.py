"""Fixtures shared by the app and integration tiers: tiny models of the real
architectures with the real tokenizers, and one real Triton for the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import stack
from tests.tiny_models import build_models_dir


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_models_dir(folder)
    return folder


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    return stack.repository_with_broken_model(tmp_path_factory.mktemp("repo") / "model_repository")


@pytest.fixture(scope="session")
def triton(repository, models_dir, tmp_path_factory):
    server = stack.start_triton(repository, models_dir, tmp_path_factory.mktemp("logs") / "triton.log")
    yield server
    stack.stop(server.process)


@pytest.fixture(scope="session")
def anyio_backend():
    # One event loop for the whole session: grpc's asyncio poller is process-wide, and
    # a loop closed after one test can otherwise receive its callbacks in the next.
    return "asyncio"
