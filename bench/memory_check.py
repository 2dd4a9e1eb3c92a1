"""GPU memory of models served together, under load and under the heaviest
requests the API accepts: does the stack fit a given card?

Starts `reranker serve` with the first model, loads the others with
`/switch_model {"keep_loaded": true}`, then for `--duration` seconds drives
every model at once with the benchmark workload (each model named in the
request), plus, once per model, the heaviest work one model instance can be
given at once: a full Triton batch (max_batch_size documents), each longer
than the model's window and so cut to it (more documents only queue more such
batches; the engine's micro-batches stay under its token budget). While
that runs, `nvidia-smi` is sampled: the device's memory in use above what it
held before the stack started, and each process's own. Any failed request is
reported: none is allowed.

  python -m bench.memory_check --models-dir /tmp/models bge-reranker-base qwen3-reranker-8b \
      --limit-gib 60 --out /tmp/memory
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bench import e2e
from bench.models import MODEL_REPOSITORY, resolve
from bench.workload import generate


class ProcessMemory:
    """Peak device memory (MiB) of each process using a GPU, sampled with nvidia-smi."""

    def __init__(self, period_s: float = 0.25) -> None:
        self.period_s = period_s
        self.available = shutil.which("nvidia-smi") is not None
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                pid, name, used = (part.strip() for part in line.split(","))
                key = f"{pid} {os.path.basename(name)}"
                if used.isdigit():
                    self.peaks[key] = max(self.peaks.get(key, 0), int(used))

    def __enter__(self) -> "ProcessMemory":
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()


async def _drive(url: str, bodies: dict[str, list[bytes]], heaviest: dict[str, bytes], concurrency: int,
                 duration_s: float, timeout_s: float) -> dict:
    import httpx

    counts = {model: {"requests": 0, "failures": 0, "errors": []} for model in bodies}
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency * len(bodies) + len(heaviest))
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        async def post(model: str, body: bytes) -> None:
            response = await client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
            counts[model]["requests"] += 1
            if response.status_code != 200:
                counts[model]["failures"] += 1
                if len(counts[model]["errors"]) < 3:
                    counts[model]["errors"].append(f"HTTP {response.status_code}: {response.text[:300]}")

        async def client_loop(model: str, offset: int) -> None:
            number = offset
            while time.monotonic() < deadline:
                await post(model, bodies[model][number % len(bodies[model])])
                number += concurrency

        await asyncio.gather(*(post(model, body) for model, body in heaviest.items()),
                             *(client_loop(model, i) for model in bodies for i in range(concurrency)))
    return counts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="the first is loaded at start-up, the others kept loaded too")
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("RERANKER_MODELS_DIR", "models")))
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=16, help="clients per model")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--limit-gib", type=float, help="report whether the peak stays under this")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=Path("bench_results/memory"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    specs = [resolve(name, args.model_repository) for name in args.models]
    requests = generate(16, args.docs, seed=7)
    bodies = {spec.name: [json.dumps({"model": spec.name, "query": r.query, "documents": list(r.documents)}).encode()
                          for r in requests] for spec in specs}
    # Every word of the workload's vocabulary is one token: max_length + 50 words are over any window.
    heaviest = {spec.name: json.dumps({"model": spec.name, "query": requests[0].query, "documents": [
        " ".join(["river", "city", "model", "search", "light"] * ((spec.max_length + 50) // 5))] * spec.max_batch_size
    }).encode() for spec in specs}
    device = e2e.GpuMemory()
    baseline = device.used()
    serve = e2e.ServeProcess(args.model_repository, args.models_dir, specs[0].name, args.out / "serve.log",
                             args.timeout)
    try:
        for spec in specs[1:]:
            response = __import__("httpx").post(f"{serve.url}/switch_model", timeout=args.timeout,
                                                json={"model_name": spec.name, "keep_loaded": True})
            response.raise_for_status()
        loaded = time.perf_counter()
        with device, ProcessMemory() as processes:
            after_load = device.used()
            counts = asyncio.run(_drive(serve.url, bodies, heaviest, args.concurrency, args.duration, args.timeout))
        result = {
            "models": [s.name for s in specs], "duration_s": args.duration, "clients_per_model": args.concurrency,
            "heaviest_request": "per model, max_batch_size documents each over the model's window",
            "requests": counts, "failures": sum(c["failures"] for c in counts.values()),
            "device_used_before_mib": baseline, "device_used_after_load_mib": after_load,
            "peak_device_mib_above_baseline": None if device.peak is None or baseline is None
            else device.peak - baseline,
            "peak_per_process_mib": processes.peaks, "seconds_under_load": round(time.perf_counter() - loaded, 1),
        }
        if args.limit_gib and result["peak_device_mib_above_baseline"] is not None:
            result["limit_gib"] = args.limit_gib
            result["fits"] = result["peak_device_mib_above_baseline"] < args.limit_gib * 1024
    finally:
        serve.stop()
    (args.out / "memory_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
