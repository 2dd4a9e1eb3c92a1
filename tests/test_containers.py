"""The container files: docker-compose.yml checked by a real compose parser
(Debian's docker-compose 1.29, which needs no Docker engine), and the
Dockerfile's two targets."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.stack import REPO_ROOT


@pytest.fixture(scope="module")
def compose() -> dict:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: apt-get install docker-compose (./run.sh test installs it)"
    result = subprocess.run(
        [binary, "-f", str(REPO_ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_has_triton_and_gateway(compose):
    assert set(compose["services"]) == {"triton", "gateway"}


def test_triton_service_gets_the_gpu_shm_and_read_only_models(compose):
    triton = compose["services"]["triton"]
    assert triton["runtime"] == "nvidia"
    assert triton["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert triton["shm_size"] in ("2gb", "2g", 2 * 1024**3)
    assert any(v.endswith("/models:/workspace/models:ro") for v in triton["volumes"])
    assert triton["environment"]["RERANKER_MODELS_DIR"] == "/workspace/models"
    assert triton["build"]["target"] == "triton"
    assert "healthcheck" in triton and triton["restart"] == "unless-stopped"


def test_gateway_waits_for_healthy_triton_on_its_grpc_port(compose):
    gateway, triton = compose["services"]["gateway"], compose["services"]["triton"]
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert {"published": 8000, "target": 8000} in [
        {k: int(p[k]) for k in ("published", "target")} for p in gateway["ports"]
    ]
    host, port = gateway["environment"]["RERANKER_TRITON_URL"].split(":")
    assert host == "triton"
    assert int(port) in [int(p["target"]) for p in triton["ports"]]
    assert gateway["build"]["target"] == "gateway"


def test_dockerfile_targets():
    text = (REPO_ROOT / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.M)[i][::-1] for i in range(2))
    assert set(stages) == {"triton", "gateway"}
    base = re.search(r"^ARG TRITON_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", base)
    gateway_stage = text.split("AS gateway", 1)[1]
    installs = " ".join(re.findall(r"^RUN (.*(?:\\\n.*)*)", gateway_stage, re.M))
    assert "pip install" in installs and "torch" not in installs and "[engine]" not in installs
    assert 'ENTRYPOINT ["reranker", "gateway"]' in gateway_stage
    assert 'ENTRYPOINT ["reranker", "triton"]' in text.split("AS gateway", 1)[0]
