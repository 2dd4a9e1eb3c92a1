"""Way (c): end to end through the gateway and Triton, over HTTP.

Either starts `reranker serve` (Triton + gateway) as a child process on free
loopback ports and stops it afterwards, or targets a gateway already running
at a URL. Each model is made active with `POST /switch_model`, then driven by
asyncio clients (httpx) posting `/v1/rerank` with 1 query x N documents.

Load time is the gateway's own figure: the `load_time_s` of the switch, or for
the model loaded at start-up the "active model X (loaded in S s)" line of the
gateway's log. GPU memory is what `nvidia-smi` reports for the device, above
what it reported before the stack started, sampled during the load: Triton's
model instance runs in another process, out of reach of torch's counters.

Needs httpx only (no torch): a gateway-only run works on a bare client machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.loadgen import percentile, run_async
from bench.models import REPO_ROOT
from rerank_engine.model_config import ModelConfig
from bench.workload import Request
from launcher.process import free_ports


class ServeProcess:
    """`reranker serve` on free loopback ports, with its log in a file."""

    def __init__(self, repository: Path, models_dir: Path, model: str, log: Path, timeout_s: float,
                 request_timeout_s: float = 600.0) -> None:
        port, http, grpc, metrics = free_ports(4)
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.model = model
        log.parent.mkdir(parents=True, exist_ok=True)
        # At saturation a large model's queue can outlast the gateway's default 60 s deadline; the
        # benchmark wants the queueing measured, not turned into timeouts. An explicit setting wins.
        env = {"RERANKER_REQUEST_TIMEOUT_S": str(request_timeout_s), **os.environ}
        with log.open("w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "launcher.cli", "serve", f"--model-repository={repository.resolve()}",
                 f"--models-dir={models_dir.resolve()}", "--host=127.0.0.1", f"--port={port}", f"--model={model}",
                 f"--triton-http-port={http}", f"--triton-grpc-port={grpc}", f"--triton-metrics-port={metrics}"],
                stdout=handle, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env,
                start_new_session=True,  # its own process group: stop() reaches Triton's stubs too
            )
        try:
            self._wait_ready(timeout_s)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"reranker serve did not become ready: {exc}\n--- {log} ---\n{self.tail()}") from None

    def _wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"it exited with code {self.process.returncode}")
            # A model that cannot load leaves the gateway up but never ready: say so now, not at the deadline.
            failed = re.search(r"default model \S+ is not active: .*", self.log.read_text(errors="replace"))
            if failed:
                raise RuntimeError(failed.group(0))
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{self.url}/health/ready was not ready after {timeout_s:.0f} s")

    def startup_load_s(self) -> float | None:
        """The gateway's own load time of the model it loaded at start-up."""
        found = re.search(rf"active model {re.escape(self.model)} \(loaded in ([\d.]+) s\)", self.log.read_text())
        return float(found.group(1)) if found else None

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> int:
        from launcher.process import stop

        # SIGINT, as Ctrl-C: the launcher stops the gateway, then Triton.
        return stop(self.process, signal.SIGINT)


class GpuMemory:
    """Peak device memory used (nvidia-smi, MiB) while sampling, on one GPU; None without nvidia-smi."""

    def __init__(self, index: int = 0, period_s: float = 0.25) -> None:
        self.index, self.period_s = index, period_s
        self.available = shutil.which("nvidia-smi") is not None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def used(self) -> int | None:
        if not self.available:
            return None
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              f"--id={self.index}"], capture_output=True, text=True)
        try:
            return int(out.stdout.split()[0])
        except (IndexError, ValueError):
            return None

    def __enter__(self) -> "GpuMemory":
        self.peak = self.used()
        if self.available:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            if (value := self.used()) is not None:
                self.peak = max(self.peak or 0, value)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


def _bodies(requests: list[Request], model: str) -> list[bytes]:
    # Encoded once: the client's JSON encoding should not be what the benchmark measures.
    return [json.dumps({"query": r.query, "documents": list(r.documents), "model": model}).encode() for r in requests]


TIMING_HEADERS = ("x-total-time", "x-queue-time", "x-inference-time")
"""The gateway's own split of each request's time (ms): its whole handling, Triton's round trip less the
engine's time (transport, queue, batching), and the engine's time for the batch the request rode in."""


async def _level(url: str, bodies: list[bytes], concurrency: int, duration_s: float, max_requests: int | None,
                 bin_s: float, timeout_s: float) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timings: dict[str, list[float]] = {name: [] for name in TIMING_HEADERS}
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def send(number: int) -> tuple[int, int]:
            response = await client.post("/v1/rerank", content=bodies[number % len(bodies)],
                                         headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
            for name, values in timings.items():
                if name in response.headers:
                    values.append(float(response.headers[name]))
            answer = response.json()
            return len(answer["results"]), int(answer["usage"]["total_tokens"])

        level = await run_async(send, concurrency, duration_s, max_requests, bin_s)
    level["gateway_p50_ms"] = {name.removeprefix("x-").removesuffix("-time"): percentile(values, 50)
                               for name, values in timings.items() if values}
    return level


def run_model(url: str, spec: ModelConfig, requests: list[Request], singles: list[Request], settings,
              load_s: float | None, memory: GpuMemory, baseline_mib: int | None) -> dict:
    """Warm-up, the concurrency levels and the single-pair level of one model through the gateway."""
    import httpx

    result: dict = {"load_s": load_s}
    bodies, single_bodies = _bodies(requests, spec.name), _bodies(singles, spec.name)
    with httpx.Client(base_url=url, timeout=settings.request_timeout_s) as client:
        for body in bodies[: settings.warmup]:
            response = client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise RuntimeError(f"warm-up request: HTTP {response.status_code}: {response.text[:500]}")
    with memory:
        result["levels"] = [
            asyncio.run(_level(url, bodies, c, settings.duration_s, settings.requests, settings.bin_s,
                               settings.request_timeout_s))
            for c in settings.concurrency
        ]
        if single_bodies:
            result["single_pair"] = asyncio.run(_level(url, single_bodies, 1, settings.duration_s,
                                                       settings.single_pair_requests, settings.bin_s,
                                                       settings.request_timeout_s))
    if memory.peak is not None and baseline_mib is not None:
        result["peak_gpu_mib"] = memory.peak - baseline_mib
        result["peak_gpu_mib_note"] = "device memory.used (nvidia-smi) during the load, above the pre-stack baseline"
    return result


def switch(url: str, model: str, timeout_s: float) -> float | None:
    """Make `model` active; its load time, or None when it was already loaded (nothing was measured)."""
    import httpx

    response = httpx.post(f"{url}/switch_model", json={"model_name": model}, timeout=timeout_s)
    if response.status_code != 200:
        raise RuntimeError(f"switch to {model} failed: HTTP {response.status_code}: {response.text[:500]}")
    load_s = response.json().get("load_time_s")
    return load_s if load_s else None


def run(specs: list[ModelConfig], pool: list[Request], singles: list[Request], settings, log_dir: Path,
        progress=print) -> dict[str, dict]:
    """Way (c) for every model: {model name: result or {"error": ...}}."""
    results: dict[str, dict] = {}
    memory = GpuMemory()
    baseline_mib = memory.used()
    serve = None
    url = settings.gateway_url
    try:
        if url is None:
            started = time.perf_counter()
            progress(f"(c) starting reranker serve with {specs[0].name} (log: {log_dir / 'serve.log'})")
            serve = ServeProcess(settings.model_repository, settings.models_dir, specs[0].name,
                                 log_dir / "serve.log", settings.stack_timeout_s, settings.request_timeout_s)
            progress(f"(c) stack ready in {time.perf_counter() - started:.1f} s at {serve.url}")
            url = serve.url
        for index, spec in enumerate(specs):
            try:
                if serve is not None and index == 0:
                    load_s = serve.startup_load_s()
                    note = "the gateway's start-up log line" if load_s else "not found in the gateway's start-up log"
                else:
                    load_s = switch(url, spec.name, settings.stack_timeout_s)
                    note = "/switch_model's load_time_s" if load_s else "already loaded in the gateway: not measured"
                progress(f"(c) {spec.name}: active (load {load_s} s)")
                results[spec.name] = run_model(url, spec, pool, singles, settings, load_s, memory, baseline_mib)
                results[spec.name]["load_s_note"] = note
            except Exception as exc:  # one model's failure must not cost the others their figures
                results[spec.name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                progress(f"(c) {spec.name}: failed: {exc}")
    except Exception as exc:
        for spec in specs:
            results.setdefault(spec.name, {"error": f"{type(exc).__name__}: {exc}"[:4000]})
        progress(f"(c) failed: {exc}")
    finally:
        if serve is not None:
            serve.stop()
    return results
