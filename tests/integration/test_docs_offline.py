"""`/docs` (Swagger UI) and `/redoc` work on a machine without internet: a real
gateway process serves them from installed files, and Debian's headless
Chromium, with its own network features off, renders each page and lists the
API's operations. No Triton is needed: the pages and the OpenAPI schema come
from the gateway alone."""

from __future__ import annotations

import re
import shutil
import subprocess

import httpx
import pytest

from tests import stack

pytestmark = pytest.mark.integration

# The gateway's own schema says which operations exist; the pages must show every one of them.
CORE_PATHS = {"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/switch_model", "/models", "/health", "/metrics"}


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory):
    (no_triton,) = stack.free_ports(1)
    gateway = stack.start_gateway(no_triton, tmp_path_factory.mktemp("docs") / "gateway.log",
                                  env={"RERANKER_TRITON_STARTUP_TIMEOUT_S": "0"}, ready_path="/health")
    yield gateway.url()
    stack.stop(gateway.process)


def render(url: str, profile) -> str:
    """The page's DOM once its scripts have run, from headless Chromium with no network of its own."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (./run.sh test installs it: apt-get install chromium)")
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_swagger_ui_lists_the_operations_from_installed_files(docs_gateway, tmp_path):
    page = httpx.get(f"{docs_gateway}/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets and all(a.startswith("/docs-assets/") for a in assets), assets  # nothing from a CDN
    for asset in assets:
        assert httpx.get(f"{docs_gateway}{asset}").status_code == 200
    dom = render(f"{docs_gateway}/docs", tmp_path)
    listed = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    schema_paths = set(httpx.get(f"{docs_gateway}/openapi.json").json()["paths"])
    assert CORE_PATHS <= schema_paths
    assert listed == schema_paths


def test_redoc_lists_the_operations(docs_gateway, tmp_path):
    page = httpx.get(f"{docs_gateway}/redoc").text
    assert "/docs-assets/redoc.standalone.js" in page and "fonts.googleapis" not in page
    dom = render(f"{docs_gateway}/redoc", tmp_path)
    operations = set(re.findall(r'id="tag/[^/"]+/operation/([^"]+)"', dom))
    assert {"rerank_rerank_post", "score_score_post", "openai_models_v1_models_get"} <= operations
    schema = httpx.get(f"{docs_gateway}/openapi.json").json()["paths"]
    assert len(operations) == sum(len(methods) for methods in schema.values())
