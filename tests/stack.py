"""Starting the real stack for tests (and GPU checks): `reranker triton`, `reranker gateway`
and `reranker serve` as processes on free loopback ports, with readiness
waits and teardown that leaves no process behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from launcher.process import free_ports, stop, wait_until_live  # noqa: F401 (stop: the tests stop processes through here)

REPO_ROOT = Path(__file__).resolve().parents[1]
RERANKER = [sys.executable, "-m", "launcher.cli"]


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> None:
    try:
        wait_until_live(url, process, timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        raise RuntimeError(f"{exc}\n--- {log} ---\n{log.read_text()[-4000:]}") from None


def repository_with_broken_model(target: Path) -> Path:
    """The shipped model repository plus `missing-weights`, a model whose weights folder does not exist."""
    shutil.copytree(REPO_ROOT / "model_repository", target, symlinks=True)
    broken = target / "missing-weights"
    shutil.copytree(target / "bge-reranker-base", broken, symlinks=True)
    config = (broken / "config.pbtxt").read_text()
    config = config.replace('name: "bge-reranker-base"', 'name: "missing-weights"')
    config = config.replace("models/bge-reranker-base", "models/does-not-exist")
    # Not a catalog model, so its config says how to get its weights, as a user's own model would.
    hint = '{ key: "weights_hint", value: { string_value: "run \'reranker weights bge\' and rename the folder" } },'
    (broken / "config.pbtxt").write_text(config.replace("parameters [", "parameters [\n  " + hint, 1))
    return target


@dataclass
class Process:
    process: subprocess.Popen
    log: Path
    ports: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"

    def url(self, port: str = "http") -> str:
        scheme = "redis" if port == "redis" else "http"
        return f"{scheme}://{self.host}:{self.ports[port]}"


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(
        [*RERANKER, *args], stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )


def start_triton(repository: Path, models_dir: Path, log: Path, ports: tuple[int, int, int] | None = None,
                 bind_address: str = "127.0.0.1") -> Process:
    """`reranker triton`; several can share the ports on different loopback addresses (127.0.0.2, ...)."""
    http, grpc, metrics = ports or free_ports(3)
    process = _start(
        ["triton", f"--model-repository={repository}", f"--models-dir={models_dir}",
         f"--triton-http-port={http}", f"--triton-grpc-port={grpc}", f"--triton-metrics-port={metrics}",
         f"--triton-bind-address={bind_address}"],
        log,
    )
    triton = Process(process, log, {"http": http, "grpc": grpc, "metrics": metrics}, host=bind_address)
    wait_for(f"{triton.url()}/v2/health/live", process, log)
    return triton


def start_gateway(triton: int | str, log: Path, model: str = "minilm-l6", env: dict[str, str] | None = None,
                  port: int | None = None, wait: bool = True, ready_path: str = "/health/ready") -> Process:
    """`reranker gateway` in front of Triton's gRPC port on loopback, or any RERANKER_TRITON_URL;
    `env` sets its other settings (RERANKER_REQUEST_TIMEOUT_S, ...). With `wait`, it is started once
    `ready_path` answers 200 (`/health` for a gateway without Triton)."""
    port = port or free_ports(1)[0]
    triton_url = f"127.0.0.1:{triton}" if isinstance(triton, int) else triton
    process = _start(
        ["gateway", "--host=127.0.0.1", f"--port={port}", f"--triton-url={triton_url}", f"--model={model}"],
        log, env,
    )
    gateway = Process(process, log, {"http": port})
    if wait:
        wait_for(f"{gateway.url()}{ready_path}", process, log)
    return gateway


def start_dns_server(records: Path, log: Path) -> Process:
    """tests/dns_server.py on a free loopback UDP port, answering from `records` (JSON, read per query)."""
    (port,) = free_ports(1)  # free for TCP a moment ago; UDP ports are their own space, and as free in practice
    handle = log.open("w")
    process = subprocess.Popen([sys.executable, "-m", "tests.dns_server", f"--port={port}", f"--records={records}"],
                               stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True)
    server = Process(process, log, {"dns": port})
    deadline = time.monotonic() + 60
    while "dns server on" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the DNS server did not start\n--- {log} ---\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    return server


def start_redis(folder: Path, port: int | None = None, binary: str | None = None) -> Process:
    """Debian's `redis-server` (or `binary`) on a free loopback port (or `port`: the same one again after a
    stop), in memory only, with its log in `folder`."""
    binary = binary or shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (./run.sh test installs it)")
    port = port or free_ports(1)[0]
    log = folder / f"redis-{port}.log"
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--protected-mode", "no"],
        stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Process(process, log, {"redis": port})
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start\n--- {log} ---\n{log.read_text()[-4000:]}")
        time.sleep(0.05)
    return server


def start_serve(repository: Path, models_dir: Path, log: Path, model: str = "minilm-l6",
                env: dict[str, str] | None = None) -> Process:
    """`reranker serve`; `env` sets the gateway's other settings (RERANKER_MAX_CONCURRENT_REQUESTS, ...)."""
    port, http, grpc, metrics = free_ports(4)
    process = _start(
        ["serve", f"--model-repository={repository}", f"--models-dir={models_dir}", "--host=127.0.0.1",
         f"--port={port}", f"--model={model}", f"--triton-http-port={http}", f"--triton-grpc-port={grpc}",
         f"--triton-metrics-port={metrics}"],
        log, env,
    )
    serve = Process(process, log, {"http": port, "triton_http": http})
    wait_for(f"{serve.url()}/health/ready", process, log)
    return serve


def engine_scorer(repository: Path, models_dir: Path, model: str, device: str = "cpu"):
    """The engine loaded straight from a model's shipped `config.pbtxt`, in this process:
    the reference that scores through the whole stack must equal."""
    import torch

    from rerank_engine.engine import EngineConfig, load_scorer
    from rerank_engine.model_config import ModelConfig

    config = ModelConfig.from_pbtxt(repository / model / "config.pbtxt")
    os.environ["RERANKER_MODELS_DIR"] = str(models_dir)
    return load_scorer(EngineConfig.from_parameters(config.parameters, config.max_batch_size, model),
                       torch.device(device))
