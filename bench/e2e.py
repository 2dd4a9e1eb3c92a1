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
        self.triton_url, self.triton_metrics_url = f"http://127.0.0.1:{http}", f"http://127.0.0.1:{metrics}/metrics"
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
    """Peak device memory used (nvidia-smi, MiB) while sampling, on one GPU; None without nvidia-smi.
    `period_s` 0: one reading on entry and one on exit only (nvidia-smi calls beside a busy server are
    not free; see README, Where the time goes)."""

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
        self._stop = threading.Event()  # one object samples each model in turn
        if self.available and self.period_s > 0:
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
        if (value := self.used()) is not None:  # the allocators keep what they reserved: the end is a sample too
            self.peak = max(self.peak or 0, value)


class TritonCounters:
    """Where a batch's time goes inside the stack, from Triton's own counters read before and after a level:
    its statistics API (batches, pairs, the python backend's `execute` time per batch) and the engine's
    compute histogram on the metrics port (`reranker_model_compute_seconds`: `score()` alone), and the
    time the instance's process spent in Python's garbage collector (`reranker_model_gc_seconds_total`).

    At saturation the GPU runs only inside `score()`, so `engine_busy` (summed engine time over the
    level's wall time) is the share of the level the model was computing; the rest is spent per batch
    around it: in `execute` outside `score()` (reading the requests, the responses, telemetry) and between
    executions (Triton's scheduling and its hops to and from the stub process)."""

    def __init__(self, triton_url: str, metrics_url: str, model: str) -> None:
        self.triton_url, self.metrics_url, self.model = triton_url, metrics_url, model

    def read(self) -> dict | None:
        import httpx

        try:
            stats = httpx.get(f"{self.triton_url}/v2/models/{self.model}/stats", timeout=10).json()["model_stats"]
            metrics = httpx.get(self.metrics_url, timeout=10).text
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        counters = {"executions": 0, "pairs": 0, "execute_ns": 0, "input_ns": 0, "output_ns": 0, "requests": 0,
                    "queue_ns": 0}
        for entry in stats:  # one entry per loaded version
            counters["executions"] += int(entry.get("execution_count", 0))
            counters["pairs"] += int(entry.get("inference_count", 0))
            queue = entry.get("inference_stats", {}).get("queue", {})  # per request: Triton's enqueue to execute
            counters["requests"] += int(queue.get("count", 0))
            counters["queue_ns"] += int(queue.get("ns", 0))
            for batch in entry.get("batch_stats", []):  # per batch size: counts are executions, ns their sum
                counters["execute_ns"] += int(batch["compute_infer"]["ns"])
                counters["input_ns"] += int(batch["compute_input"]["ns"])
                counters["output_ns"] += int(batch["compute_output"]["ns"])
        for key, metric in (("engine_sum", "reranker_model_compute_seconds_sum"),
                            ("engine_count", "reranker_model_compute_seconds_count"),
                            ("gc_sum", "reranker_model_gc_seconds_total")):
            found = re.search(rf'^{metric}{{[^}}]*model="{re.escape(self.model)}"[^}}]*}} (\S+)$', metrics, re.MULTILINE)
            counters[key] = float(found.group(1)) if found else None
        return counters

    @staticmethod
    def between(before: dict | None, after: dict | None, elapsed_s: float) -> dict | None:
        if before is None or after is None or after["executions"] <= before["executions"]:
            return None
        batches = after["executions"] - before["executions"]

        def per_batch_ms(key: str) -> float:
            return round((after[key] - before[key]) / batches / 1e6, 2)

        figures = {
            "batches": batches,
            "mean_batch_pairs": round((after["pairs"] - before["pairs"]) / batches, 2),
            "wall_ms_per_batch": round(1000 * elapsed_s / batches, 2),
            "execute_ms_per_batch": per_batch_ms("execute_ns"),
            "input_ms_per_batch": per_batch_ms("input_ns"),
            "output_ms_per_batch": per_batch_ms("output_ns"),
        }
        if (requests := after.get("requests", 0) - before.get("requests", 0)) > 0:
            figures["triton_queue_ms_per_request"] = round((after["queue_ns"] - before["queue_ns"]) / requests / 1e6, 2)
        if before["engine_sum"] is not None and after["engine_sum"] is not None:
            engine_s = after["engine_sum"] - before["engine_sum"]
            figures["engine_ms_per_batch"] = round(1000 * engine_s / batches, 2)
            figures["engine_busy"] = round(engine_s / elapsed_s, 3)
        if before.get("gc_sum") is not None and after.get("gc_sum") is not None:
            figures["gc_ms_per_batch"] = round(1000 * (after["gc_sum"] - before["gc_sum"]) / batches, 2)
        return figures


def _bodies(requests: list[Request], model: str) -> list[bytes]:
    # Encoded once: the client's JSON encoding should not be what the benchmark measures.
    return [json.dumps({"query": r.query, "documents": list(r.documents), "model": model}).encode() for r in requests]


TIMING_HEADERS = ("x-total-time", "x-queue-time", "x-inference-time")
"""The gateway's own split of each request's time (ms): its whole handling, Triton's round trip less the
engine's time (transport, queue, batching), and the engine's time for the batch the request rode in."""


async def _level(url: str, bodies: list[bytes], concurrency: int, duration_s: float, max_requests: int | None,
                 bin_s: float, timeout_s: float, counters: TritonCounters | None = None) -> dict:
    import httpx

    before = counters.read() if counters else None

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
    level["gateway_mean_ms"] = {name.removeprefix("x-").removesuffix("-time"): round(sum(values) / len(values), 2)
                                for name, values in timings.items() if values}
    if counters and (inside := TritonCounters.between(before, counters.read(), level["elapsed_s"])):
        level["triton"] = inside
    return level


def run_model(url: str, spec: ModelConfig, requests: list[Request], singles: list[Request], settings,
              load_s: float | None, memory: GpuMemory, baseline_mib: int | None,
              counters: TritonCounters | None = None) -> dict:
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
                               settings.request_timeout_s, counters))
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
    memory = GpuMemory(period_s=settings.gpu_memory_period_s)
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
                counters = serve and TritonCounters(serve.triton_url, serve.triton_metrics_url, spec.name)
                results[spec.name] = run_model(url, spec, pool, singles, settings, load_s, memory, baseline_mib,
                                               counters)
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
