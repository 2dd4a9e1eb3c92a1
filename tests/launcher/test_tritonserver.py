"""The tritonserver command line the launcher builds: loopback by default,
every port on the bind address, and the GPU variant of model configs only where
a GPU is visible."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from launcher.settings import TritonSettings
from launcher.tritonserver import TritonInstall, TritonOptions, resolve_config_name, triton_command, visible_gpus
from rerank_engine.model_config import ModelConfig
from tests.stack import REPO_ROOT

OPTIONS = TritonOptions(Path("/repo"), Path("/models"), 8100, 8101, 8102)


def test_triton_listens_on_loopback_unless_told_otherwise():
    assert TritonSettings().triton_bind_address == "127.0.0.1"
    command = triton_command(TritonInstall(Path("/bin/tritonserver"), None), OPTIONS)
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in command
    assert not any(arg.startswith("--model-config-name") for arg in command)
    wide = TritonOptions(Path("/repo"), Path("/models"), 1, 2, 3, bind_address="0.0.0.0", config_name="gpu")
    command = triton_command(TritonInstall(Path("/bin/tritonserver"), None), wide)
    assert "--grpc-address=0.0.0.0" in command and "--model-config-name=gpu" in command


def _fake_nvidia_smi(folder: Path, gpus: int) -> None:
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H200 (UUID: GPU-{i})'\n" for i in range(gpus)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize(("gpus", "cuda_visible", "want"), [
    (0, None, 0), (2, None, 2), (2, "1", 1), (2, "", 0), (2, "-1", 0),
])
def test_visible_gpus(tmp_path, monkeypatch, gpus, cuda_visible, want):
    if gpus:
        _fake_nvidia_smi(tmp_path, gpus)
    monkeypatch.setenv("PATH", str(tmp_path) if gpus else "/nonexistent")
    if cuda_visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
    assert visible_gpus() == want
    assert resolve_config_name("auto") == ("gpu" if want else None)
    assert resolve_config_name("none") is None and resolve_config_name("h100") == "h100"


def test_only_bge_has_a_gpu_variant_and_it_differs_in_instances_alone():
    variants = sorted(p.relative_to(REPO_ROOT / "model_repository") for p in
                      (REPO_ROOT / "model_repository").glob("*/configs/*.pbtxt"))
    assert variants == [Path("bge-reranker-base/configs/gpu.pbtxt")]
    cpu = ModelConfig.from_pbtxt(REPO_ROOT / "model_repository/bge-reranker-base/config.pbtxt")
    gpu = ModelConfig.from_pbtxt(REPO_ROOT / "model_repository/bge-reranker-base/configs/gpu.pbtxt")
    assert cpu.instance_count == 1 < gpu.instance_count  # a CPU server keeps one model copy
    assert os.path.basename(gpu.weights_path) == os.path.basename(cpu.weights_path)


def test_triton_traces_only_when_given_an_endpoint():
    install = TritonInstall(Path("/bin/tritonserver"), None)
    assert not any(arg.startswith("--trace-config") for arg in triton_command(install, OPTIONS))
    traced = TritonOptions(Path("/repo"), Path("/models"), 1, 2, 3, trace_endpoint="http://jaeger:4318/", trace_rate=10)
    flags = [arg for arg in triton_command(install, traced) if arg.startswith("--trace-config")]
    assert flags == ["--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS", "--trace-config=rate=10",
                     "--trace-config=count=-1", "--trace-config=opentelemetry,url=http://jaeger:4318/v1/traces",
                     "--trace-config=opentelemetry,resource=service.name=triton"]
