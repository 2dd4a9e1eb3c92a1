"""The gateway's own cost per request, two versions side by side: the working
tree's gateway against the one at a git revision, both in this process, both
on one running Triton, their requests taken in turn so that both see the same
machine noise.

Each version is the real app (`create_app`, lifespan included) driven through
`httpx.ASGITransport`, so the figures leave out the HTTP server and keep
everything from the first middleware to the response: parsing, validation,
the service, the Triton round trip and serialisation. Reported per version:
client-side p50/p90 of sequential single-pair `/v1/rerank` calls, and the
gateway's own share (`x-total-time` minus Triton's queue and inference time).

  reranker triton --models-dir models &          # or any running Triton with the model
  python -m bench.gateway_ab --triton-url 127.0.0.1:8101 --model bge --baseline HEAD~1
  python -m bench.gateway_ab ... --docs 100 --requests 100 --warmup 10   # RAG-sized requests

`--variant` adds working-tree gateways with other settings, taken in the same
turns: `--variant traced:otlp_endpoint=http://127.0.0.1:4318` (tracing on,
exporting to a running OTLP/HTTP receiver), `--variant keyed:api_keys="<key> score"
--api-key <key>` (API keys on; every version sends the key, the others ignore it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
BODY = {"query": "what do giant pandas eat?", "documents": ["Giant pandas eat bamboo almost exclusively."]}


def gateway_at(revision: str, folder: Path) -> str:
    """The `gateway` package at `revision`, unpacked as `gateway_<sha>` under `folder`; its import name."""
    sha = subprocess.run(["git", "rev-parse", "--short", revision], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    name, engine = f"gateway_{sha}", f"rerank_engine_{sha}"
    # The engine's torch-free modules the gateway imports (contract, catalog, model_config) come from the same
    # revision: a gateway asks Triton for the outputs its own contract names.
    archive = subprocess.run(["git", "archive", revision, "gateway", "rerank_engine"], cwd=REPO_ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "gateway").rename(folder / name)
    (folder / "rerank_engine").rename(folder / engine)
    (folder / engine / "__init__.py").write_text("")  # the package's own __init__ may import torch
    for module in [*(folder / name).glob("*.py"), *(folder / engine).glob("*.py")]:
        text = re.sub(r"\bgateway\.", f"{name}.", module.read_text())
        module.write_text(re.sub(r"\brerank_engine\b", engine, text))
    return name


@contextlib.asynccontextmanager
async def client_for(create_app, settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=60) as client:
            yield client


async def measure(args: argparse.Namespace, versions: dict[str, tuple]) -> dict[str, dict]:
    samples = {label: {"client_ms": [], "own_ms": []} for label in versions}
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    # --docs N: one request of N distinct short documents, the shape of a RAG query (the per-document work of
    # parsing, validation, the Triton request and the response grows with N; the scoring is taken out).
    body = BODY if args.docs == 1 else {"query": BODY["query"],
                                        "documents": [f"{BODY['documents'][0]} ({i})" for i in range(args.docs)]}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for label, (create_app, settings_cls, extra) in versions.items():
            settings = settings_cls(triton_url=args.triton_url, default_model=args.model, **extra)
            clients[label] = await stack.enter_async_context(client_for(create_app, settings))
        for round_ in range(args.warmup + args.requests):
            for label, client in clients.items():
                started = time.perf_counter()
                response = await client.post("/v1/rerank", json=body, headers=headers)
                elapsed = 1000 * (time.perf_counter() - started)
                response.raise_for_status()
                if round_ < args.warmup:
                    continue
                h = response.headers
                samples[label]["client_ms"].append(elapsed)
                own = float(h["x-total-time"]) - float(h["x-queue-time"]) - float(h["x-inference-time"])
                samples[label]["own_ms"].append(own)
    report = {}
    for label, values in samples.items():
        client, own = sorted(values["client_ms"]), values["own_ms"]
        report[label] = {
            "client_p50_ms": round(statistics.median(client), 3),
            "client_p90_ms": round(client[int(0.9 * len(client))], 3),
            "gateway_own_p50_ms": round(statistics.median(own), 3),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-url", required=True, help="gRPC host:port of a running Triton")
    parser.add_argument("--model", default="bge")
    parser.add_argument("--baseline", default="HEAD", help="git revision of the gateway to compare against")
    parser.add_argument("--requests", type=int, default=1000, help="per version")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--docs", type=int, default=1, help="documents per request (default: single pairs)")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:SETTING=VALUE[,SETTING=VALUE]",
                        help="another working-tree gateway with these settings (repeatable)")
    parser.add_argument("--api-key", help="sent with every request (for variants with api_keys)")
    args = parser.parse_args()
    logging.disable(logging.INFO)  # one line per request from httpx otherwise
    with tempfile.TemporaryDirectory() as folder:
        name = gateway_at(args.baseline, Path(folder))
        sys.path.insert(0, folder)
        baseline_app = __import__(f"{name}.app", fromlist=["create_app"]).create_app
        baseline_settings = __import__(f"{name}.settings", fromlist=["GatewaySettings"]).GatewaySettings
        from gateway.app import create_app
        from gateway.settings import GatewaySettings

        versions = {f"baseline ({args.baseline})": (baseline_app, baseline_settings, {}),
                    "working tree": (create_app, GatewaySettings, {})}
        for variant in args.variant:
            label, _, assignments = variant.partition(":")
            extra = dict(item.split("=", 1) for item in assignments.split(",") if item)
            versions[label] = (create_app, GatewaySettings, extra)
        report = asyncio.run(measure(args, versions))
    for label, figures in report.items():
        print(f"{label:>24}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
