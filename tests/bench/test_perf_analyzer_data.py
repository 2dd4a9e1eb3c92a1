"""perf_analyzer's input data: one valid file per model of model_repository/,
tensors matching each config.pbtxt, laid out in requests of one query for
`-b`, reproducible from the generator; and run.sh, with and without a
perf_analyzer on PATH."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bench.models import repository_models
from bench.perf_analyzer import generate
from tests.stack import REPO_ROOT

DATA = REPO_ROOT / "bench" / "perf_analyzer" / "data"
RUN = REPO_ROOT / "bench" / "perf_analyzer" / "run.sh"
MODELS = repository_models(REPO_ROOT / "model_repository")


def _manifest() -> dict:
    return json.loads((DATA / "manifest.json").read_text())


def test_one_file_per_model_of_the_repository():
    assert sorted(MODELS) == ["bge-reranker-base", "minilm-l6", "qwen3-reranker-4b", "qwen3-reranker-4b-fp8",
                              "qwen3-reranker-8b", "qwen3-reranker-8b-fp8"]
    assert {p.stem for p in DATA.glob("*.json")} - {"manifest"} == set(MODELS)
    assert set(_manifest()["models"]) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tensors_match_the_model_config(name):
    spec = MODELS[name]
    entry_info = _manifest()["models"][name]
    entries = json.loads((DATA / entry_info["file"]).read_text())["data"]
    inputs = {i.name: i for i in spec.inputs}
    batch = entry_info["batch_size"]
    assert batch == min(100, spec.max_batch_size)
    assert len(entries) == entry_info["requests"] * batch and entries
    for entry in entries:
        assert set(entry) <= set(inputs), f"{set(entry) - set(inputs)} are not inputs of {name}"
        assert {n for n, i in inputs.items() if not i.optional} <= set(entry)
        for tensor_name, tensor in entry.items():
            assert inputs[tensor_name].data_type == "TYPE_STRING"
            assert tensor["shape"] == list(inputs[tensor_name].dims)  # the row without the batch dimension
            assert len(tensor["content"]) == 1 and isinstance(tensor["content"][0], str)
            assert tensor["content"][0].strip()
    # perf_analyzer starts each request at a multiple of -b: every block is one query's documents.
    blocks = [entries[i:i + batch] for i in range(0, len(entries), batch)]
    queries = [{e["query"]["content"][0] for e in block} for block in blocks]
    assert all(len(q) == 1 for q in queries) and len({q.pop() for q in queries}) == len(blocks)
    words = [len(e["document"]["content"][0].split()) for e in entries]
    assert 64 <= min(words) and max(words) <= 256


def test_qwen3_models_get_the_default_instruction_and_the_others_none():
    from rerank_engine.qwen3_prompt import DEFAULT_INSTRUCTION

    for name, spec in MODELS.items():
        first = json.loads((DATA / f"{name}.json").read_text())["data"][0]
        if spec.scorer == "qwen3_reranker":
            assert first["instruction"]["content"] == [DEFAULT_INSTRUCTION]
        else:
            assert "instruction" not in first


def test_the_shipped_files_are_what_the_generator_builds(tmp_path):
    generate.write_all(tmp_path)
    for path in DATA.glob("*.json"):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), f"{path.name}: run the generator again"


def _run(*args: str, path: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": path, **(env or {})})


def test_without_perf_analyzer_it_says_so_and_points_to_rerank_bench(tmp_path):
    result = _run("bge-reranker-base", path="/usr/bin:/bin")
    assert result.returncode == 3
    assert "perf_analyzer is not installed" in result.stdout
    assert "nvcr.io/nvidia/tritonserver:24.10-py3-sdk" in result.stdout
    assert "python -m bench.rerank_bench bge-reranker-base" in result.stdout
    unknown = _run("no-such-model", path="/usr/bin:/bin")
    assert unknown.returncode == 2 and "no input data for 'no-such-model'" in unknown.stderr


def test_with_perf_analyzer_it_runs_each_concurrency_against_triton(tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "bin" / "perf_analyzer"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = {"CONCURRENCY": "1 8", "OUT": str(tmp_path / "out")}
    result = _run("qwen3-reranker-4b", "--percentile=99", path=f"{fake.parent}:/usr/bin:/bin", env=env)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 2
    for line, concurrency in zip(lines, (1, 8), strict=True):
        args = line.split()
        assert args[args.index("-m") + 1] == "qwen3-reranker-4b"
        assert args[args.index("-u") + 1] == "localhost:8101" and args[args.index("-i") + 1] == "grpc"
        assert args[args.index("--input-data") + 1] == str(DATA / "qwen3-reranker-4b.json")
        assert args[args.index("-b") + 1] == "64"
        assert args[args.index("--concurrency-range") + 1] == f"{concurrency}:{concurrency}"
        assert "instruction:1" in args and args[-1] == "--percentile=99"
    _run("bge-reranker-base", path=f"{fake.parent}:/usr/bin:/bin", env={**env, "CONCURRENCY": "64"})
    bge = calls.read_text().splitlines()[-1].split()
    assert bge[bge.index("-b") + 1] == "100" and "instruction:1" not in bge
