"""Builds perf_analyzer's --input-data JSON files, one per model of
model_repository/, from issue 6's workload (bench.workload), so they are
reproducible: the same seed gives the same files, byte for byte.

Our models batch (max_batch_size > 0) and every input has dims [1], so
perf_analyzer's data entries are batch-1 rows, each string tensor written as
{"content": [text], "shape": [1]}; with `-b B` perf_analyzer sends B
consecutive entries as one [B, 1] request, starting at a multiple of B. Each
model's file therefore holds requests of B = min(docs, max_batch_size) rows
that share one query, and manifest.json gives B (run.sh passes it as -b).
Qwen3 models also get the optional `instruction` input (the default one).

  python -m bench.perf_analyzer.generate              # rewrites bench/perf_analyzer/data/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.models import MODEL_REPOSITORY, repository_models
from rerank_engine.model_config import ModelConfig
from bench.workload import describe, generate
from rerank_engine.qwen3_prompt import DEFAULT_INSTRUCTION

DATA_DIR = Path(__file__).resolve().parent / "data"


def _tensor(text: str) -> dict:
    return {"content": [text], "shape": [1]}


def model_data(spec: ModelConfig, requests: int, docs: int, seed: int) -> tuple[dict, int]:
    """perf_analyzer's input data for one model, and the batch size (-b) it is laid out for."""
    batch = min(docs, spec.max_batch_size)
    entries = []
    for request in generate(requests, batch, seed):
        for document in request.documents:
            entry = {"query": _tensor(request.query), "document": _tensor(document)}
            if spec.scorer == "qwen3_reranker":
                entry["instruction"] = _tensor(DEFAULT_INSTRUCTION)
            entries.append(entry)
    return {"data": entries}, batch


def dump(data: dict) -> str:
    # One entry per line: small diffs, and still one JSON document.
    rows = ",\n".join(json.dumps(entry, ensure_ascii=False) for entry in data["data"])
    return '{"data": [\n' + rows + "\n]}\n"


def write_all(out: Path, repository: Path = MODEL_REPOSITORY, requests: int = 2, docs: int = 100,
              seed: int = 0) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "workload": describe(docs, (64, 256)) + f"; {requests} distinct requests per model, seed {seed}",
        "generator": "python -m bench.perf_analyzer.generate",
        "models": {},
    }
    for name, spec in sorted(repository_models(repository).items()):
        data, batch = model_data(spec, requests, docs, seed)
        (out / f"{name}.json").write_text(dump(data))
        manifest["models"][name] = {"file": f"{name}.json", "batch_size": batch, "requests": requests,
                                    "inputs": sorted(data["data"][0])}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--requests", type=int, default=2, help="distinct requests per model (round robin)")
    parser.add_argument("--docs", type=int, default=100, help="documents per request, capped at max_batch_size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    manifest = write_all(args.out, args.model_repository, args.requests, args.docs, args.seed)
    for entry in manifest["models"].values():
        print(f"{args.out / entry['file']}: -b {entry['batch_size']}, inputs {', '.join(entry['inputs'])}")


if __name__ == "__main__":
    main()
