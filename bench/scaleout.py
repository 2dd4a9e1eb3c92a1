"""Scale-out on one host: how far two GPUs carry each model end to end, one
Triton on both against one Triton per GPU behind one gateway.

For each model, the same closed-loop HTTP clients as rerank_bench's way (c)
(1 query x N documents on /v1/rerank, bench.e2e) drive three stacks in turn:

  one_gpu         one Triton that sees the first GPU only (CUDA_VISIBLE_DEVICES): the reference
  one_triton      one Triton that sees both GPUs; KIND_AUTO puts the model's instances on each
  triton_per_gpu  two Tritons, one per GPU, behind one gateway (RERANKER_TRITON_URL=a,b),
                  which balances requests over them (gateway.fleet.pool)

and reports pairs/s per concurrency level, the best, and the factor against
one_gpu, with the requests each Triton served (its own metrics). Writes
scaleout.json into --out and prints a table.

On a 2-GPU machine:
  python -m bench.scaleout qwen4b bge --models-dir models --out bench_results/scaleout
  python -m bench.scaleout qwen4b bge --random-weights --models-dir /tmp/models   # no real weights there
Without GPUs (--gpus none, the default where nvidia-smi lists none) the same three stacks run on the CPU:
a test of the machinery, not a figure (tests/bench/test_scaleout.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from bench.e2e import _bodies, _level, switch
from bench.models import MODEL_REPOSITORY, REPO_ROOT, resolve
from bench.rerank_bench import DEFAULT_TOKENIZERS, build_random_weights, environment, weights_label
from bench.workload import describe, generate
from launcher.process import free_ports, stop
from launcher.tritonserver import visible_gpus

SCHEMA = "scaleout/1"
REFERENCE = "one_gpu"


def log(message: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def configurations(gpus: list[str]) -> dict[str, dict]:
    """Each stack: what it is, and the CUDA_VISIBLE_DEVICES of each of its Tritons (None: left as it is)."""
    if not gpus:
        return {
            "one_gpu": {"text": "one Triton on the CPU (no GPU here)", "tritons": [None]},
            "one_triton": {"text": "one Triton on the CPU (no GPU here)", "tritons": [None]},
            "triton_per_gpu": {"text": "two Tritons on the CPU behind one gateway (no GPU here)",
                               "tritons": [None, None]},
        }
    first, both = gpus[0], ",".join(gpus[:2])
    return {
        "one_gpu": {"text": f"one Triton on GPU {first}", "tritons": [first]},
        "one_triton": {"text": f"one Triton on GPUs {both} (KIND_AUTO: instances on each)", "tritons": [both]},
        "triton_per_gpu": {"text": f"one Triton per GPU ({', '.join(gpus[:2])}) behind one gateway",
                           "tritons": gpus[:2]},
    }


class Stack:
    """Tritons (`reranker triton`, one per entry of `devices`) and one `reranker gateway` in front of them."""

    def __init__(self, devices: list[str | None], repository: Path, models_dir: Path, model: str, logs: Path,
                 timeout_s: float, request_timeout_s: float) -> None:
        self.processes: list[subprocess.Popen] = []
        self.logs: dict[subprocess.Popen, Path] = {}
        self.tritons: list[dict] = []
        logs.mkdir(parents=True, exist_ok=True)
        try:
            for index, device in enumerate(devices):
                http, grpc, metrics = free_ports(3)
                env = {} if device is None else {"CUDA_VISIBLE_DEVICES": device}
                self._start(["triton", f"--model-repository={repository.resolve()}",
                             f"--models-dir={models_dir.resolve()}", f"--triton-http-port={http}",
                             f"--triton-grpc-port={grpc}", f"--triton-metrics-port={metrics}"],
                            logs / f"triton-{index}.log", env)
                self.tritons.append({"grpc": f"127.0.0.1:{grpc}", "http": f"http://127.0.0.1:{http}",
                                     "metrics": f"http://127.0.0.1:{metrics}/metrics", "cuda_visible_devices": device})
            for triton in self.tritons:
                self._wait(f"{triton['http']}/v2/health/live", timeout_s)
            (port,) = free_ports(1)
            self.url = f"http://127.0.0.1:{port}"
            # At saturation a large model's queue can outlast the default 60 s deadline; measured, not failed.
            self._start(["gateway", "--host=127.0.0.1", f"--port={port}", f"--model={model}",
                         f"--triton-url={','.join(t['grpc'] for t in self.tritons)}"],
                        logs / "gateway.log", {"RERANKER_REQUEST_TIMEOUT_S": str(request_timeout_s),
                                               "RERANKER_MODEL_LOAD_TIMEOUT_S": str(timeout_s)})
            self._wait(f"{self.url}/health/ready", timeout_s)
        except BaseException:
            self.stop()
            raise

    def _start(self, args: list[str], log_file: Path, env: dict[str, str]) -> None:
        with log_file.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "launcher.cli", *args], stdout=handle, stderr=subprocess.STDOUT,
                cwd=REPO_ROOT, env={**os.environ, **env}, start_new_session=True)
        self.processes.append(process)
        self.logs[process] = log_file

    def _wait(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"reranker {process.args[3]} exited with code {process.returncode}:\n"
                                       f"{self.logs[process].read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{url} was not ready after {timeout_s:.0f} s")

    def served(self) -> list[int]:
        """Successful inferences each Triton counted so far (all models)."""
        counts = []
        for triton in self.tritons:
            text = httpx.get(triton["metrics"], timeout=10).text
            found = re.findall(r"^nv_inference_request_success\{[^}]*\} (\S+)$", text, re.M)
            counts.append(int(sum(float(v) for v in found)))
        return counts

    def stop(self) -> None:
        for process in reversed(self.processes):  # the gateway first, then the Tritons
            stop(process, signal.SIGTERM)


def measure(stack: Stack, model: str, bodies: list[bytes], args: argparse.Namespace) -> dict:
    load_s = switch(stack.url, model, args.stack_timeout)
    with httpx.Client(base_url=stack.url, timeout=args.request_timeout) as client:
        for body in bodies[: args.warmup]:
            response = client.post("/v1/rerank", content=body, headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise RuntimeError(f"warm-up request: HTTP {response.status_code}: {response.text[:500]}")
    before = stack.served()
    levels = []
    for concurrency in args.concurrency:
        levels.append(asyncio.run(_level(stack.url, bodies, concurrency, args.duration, args.requests, args.bin,
                                         args.request_timeout)))
        top = levels[-1]
        log(f"  {model} c={concurrency}: {top['pairs_per_s']} pairs/s, {top['failures']} failed, "
            f"p50 {top['p50_ms']} ms, p99 {top['p99_ms']} ms")
    after = stack.served()
    best = max(levels, key=lambda level: level["pairs_per_s"])
    return {"load_s": load_s, "levels": levels, "best_pairs_per_s": best["pairs_per_s"],
            "best_concurrency": best["concurrency"], "failures": sum(level["failures"] for level in levels),
            "requests_per_triton": [a - b for a, b in zip(after, before)]}


def factors(results: dict[str, dict]) -> dict[str, dict[str, float | None]]:
    """Per model: each stack's best pairs/s over one_gpu's."""
    out: dict[str, dict[str, float | None]] = {}
    reference = results.get(REFERENCE, {}).get("models", {})
    for name, result in results.items():
        for model, figures in result.get("models", {}).items():
            base = reference.get(model, {}).get("best_pairs_per_s")
            value = figures.get("best_pairs_per_s")
            out.setdefault(model, {})[name] = round(value / base, 3) if base and value is not None else None
    return out


def table(data: dict) -> str:
    rows = ["| model | stack | pairs/s (best) | concurrency | x one GPU | requests per Triton |",
            "|---|---|---:|---:|---:|---|"]
    for name, result in data["configurations"].items():
        for model, figures in result.get("models", {}).items():
            if "error" in figures:
                rows.append(f"| {model} | {name} | error: {figures['error'][:80]} | | | |")
                continue
            rows.append(f"| {model} | {name} | {figures['best_pairs_per_s']} | {figures['best_concurrency']} | "
                        f"{data['factors'][model][name]} | {figures['requests_per_triton']} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="+", help="Triton names or aliases (qwen4b, bge, ...)")
    parser.add_argument("--gpus", default="auto",
                        help="comma-separated GPU indexes (the first two are used), 'none', or auto (nvidia-smi)")
    parser.add_argument("--stacks", nargs="+", default=["one_gpu", "one_triton", "triton_per_gpu"],
                        choices=["one_gpu", "one_triton", "triton_per_gpu"])
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("RERANKER_MODELS_DIR", "models")))
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--random-weights", action="store_true",
                        help="build random-weight models of the real architectures into --models-dir first")
    parser.add_argument("--tokenizers", type=Path, default=DEFAULT_TOKENIZERS, help="for --random-weights")
    parser.add_argument("--weights-label", help="label for the weights in the output (default: detected)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--doc-tokens", type=int, nargs=2, default=(64, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--pool", type=int, default=64, help="distinct requests, sent round robin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per concurrency level")
    parser.add_argument("--requests", type=int, help="requests per level instead of a duration")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--bin", type=float, default=1.0, help="seconds per point of the timelines")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--stack-timeout", type=float, default=900.0, help="start-up and model load deadline")
    parser.add_argument("--out", type=Path, help="default: bench_results/scaleout-<UTC time>")
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or args.docs < 1 or args.pool < 1:
        parser.error("--concurrency, --docs and --pool must be positive")
    return args


def gpu_list(setting: str) -> list[str]:
    if setting == "none":
        return []
    if setting == "auto":
        return [str(i) for i in range(visible_gpus())]
    return [g.strip() for g in setting.split(",") if g.strip()]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    gpus = gpu_list(args.gpus)
    if len(gpus) == 1:
        raise SystemExit("one GPU visible: the comparison needs two (or --gpus none for the CPU run)")
    started_at = datetime.now(timezone.utc)
    out = args.out or Path("bench_results") / f"scaleout-{started_at:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    specs = [resolve(name, args.model_repository) for name in args.models]
    if args.random_weights:
        build_random_weights(args, specs)
    stacks = {name: spec for name, spec in configurations(gpus).items() if name in args.stacks}
    pool = generate(args.pool, args.docs, args.seed, tuple(args.doc_tokens))
    data = {
        "schema": SCHEMA,
        "started": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.scaleout", *(argv if argv is not None else sys.argv[1:])]),
        "environment": {**environment(f"cuda:{gpus[0]}" if gpus else None), "gpus": gpus},
        "weights": {spec.name: weights_label(spec.weights_dir(args.models_dir), args.random_weights,
                                             args.weights_label) for spec in specs},
        "settings": {"concurrency": args.concurrency, "docs": args.docs, "doc_tokens": list(args.doc_tokens),
                     "workload": describe(args.docs, tuple(args.doc_tokens)), "pool": args.pool,
                     "duration_s": args.duration, "requests": args.requests},
        "configurations": {},
    }
    for name, stack_spec in stacks.items():
        entry = data["configurations"][name] = {"description": stack_spec["text"],
                                                "tritons": stack_spec["tritons"], "models": {}}
        log(f"{name}: {stack_spec['text']}")
        try:
            stack = Stack(stack_spec["tritons"], args.model_repository, args.models_dir, specs[0].name,
                          out / "logs" / name, args.stack_timeout, args.request_timeout)
        except Exception as exc:  # one stack's failure must not cost the others their figures
            entry["error"] = f"{type(exc).__name__}: {exc}"[:4000]
            log(f"{name}: the stack did not start: {exc}")
            continue
        try:
            for spec in specs:
                try:
                    entry["models"][spec.name] = measure(stack, spec.name, _bodies(pool, spec.name), args)
                except Exception as exc:
                    entry["models"][spec.name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    log(f"{name} {spec.name}: failed: {exc}")
        finally:
            stack.stop()
    data["factors"] = factors(data["configurations"])
    data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (out / "scaleout.json").write_text(json.dumps(data, indent=1))
    (out / "scaleout.md").write_text(table(data) + "\n")
    print(table(data))
    print(out / "scaleout.json")
    return data


if __name__ == "__main__":
    main()
