"""bench.rerank_bench on the CPU with the tiny models: the closed-loop drivers,
the batcher's two policies, the seed-style baseline's scores against the
engine's, and whole runs of ways (a)+(b) in process and (b)+(c) through a
real `reranker serve`, checked through the JSON, markdown and PNG they write."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import numpy as np
import pytest
import torch

from bench import rerank_bench
from bench.baseline import SeedStyleScorer
from bench.inprocess import Batcher, engine_share, request_sender
from bench.loadgen import percentile, run_async, run_threads
from bench.models import resolve
from bench.workload import generate
from launcher import report
from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.scoring import Pair

TINY = ["--concurrency", "1", "2", "--docs", "3", "--doc-tokens", "8", "16", "--requests", "3", "--warmup", "1",
        "--single-pair-requests", "2", "--weights-label", "tiny random test models", "--device", "cpu"]


def test_percentile_is_numpys_linear_one():
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert percentile([], 50) is None


class _InFlight:
    def __init__(self) -> None:
        self.now = self.peak = 0
        self.lock = threading.Lock()

    def __enter__(self):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc):
        with self.lock:
            self.now -= 1


def test_threads_keep_the_concurrency_and_the_request_cap():
    in_flight = _InFlight()

    def send(number):
        with in_flight:
            time.sleep(0.01)
        if number == 3:
            raise RuntimeError("boom")
        return 2, 10

    level = run_threads(send, concurrency=4, duration_s=60, max_requests=12)
    assert (level["requests"], level["failures"], in_flight.peak) == (12, 1, 4)
    assert (level["pairs"], level["tokens"]) == (22, 110)
    assert level["errors"] == ["RuntimeError: boom"]
    assert level["p50_ms"] >= 10 and level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"] <= level["max_ms"]
    assert sum(point["requests"] for point in level["timeline"]) == 12
    # With a duration instead of a cap, each client still sends its first request.
    assert run_threads(send, concurrency=3, duration_s=0)["requests"] == 3


def test_async_clients_keep_the_concurrency():
    in_flight = _InFlight()

    async def send(number):
        with in_flight:
            await asyncio.sleep(0.01)
        return 1, 5

    level = asyncio.run(run_async(send, concurrency=5, duration_s=60, max_requests=15))
    assert (level["requests"], level["failures"], level["pairs"], in_flight.peak) == (15, 0, 15, 5)


def test_seed_policy_batches_single_pairs_in_arrival_order():
    seen = []
    batcher = Batcher(lambda pairs: seen.append(pairs) or [len(q) for q, _ in pairs], max_pairs=8, max_delay_s=0.2)
    pairs = [(f"q{i:02d}", f"d{i}") for i in range(20)]
    futures = [batcher.submit([pair]) for pair in pairs]
    assert [f.result(timeout=10) for f in futures] == [3] * 20
    batcher.close()
    assert [len(batch) for batch in seen] == [8, 8, 4]
    assert [pair for batch in seen for pair in batch] == pairs  # no sorting by length


def test_engine_policy_merges_whole_chunks_up_to_max_batch_size():
    batcher = Batcher(lambda pairs: [1] * len(pairs), max_pairs=64, max_delay_s=0.5)
    futures = [batcher.submit([("q", "d")] * n) for n in (20, 20, 20, 10)]
    assert [f.result(timeout=10) for f in futures] == [20, 20, 20, 10]
    batcher.close()
    assert batcher.batch_sizes == [60, 10]  # the 10-pair chunk would overflow 64: never split, next batch
    with pytest.raises(ValueError):
        Batcher(lambda pairs: [], max_pairs=8, max_delay_s=0).submit([("q", "d")] * 9)


def test_the_batcher_counts_its_engine_time_per_level():
    batcher = Batcher(lambda pairs: (time.sleep(0.05), [1] * len(pairs))[1], max_pairs=4, max_delay_s=0)
    send = request_sender(batcher, [[("q", "d")] * 6], chunk_pairs=4)
    before = (len(batcher.batch_sizes), batcher.busy_s)
    level = run_threads(send, concurrency=1, duration_s=60, max_requests=2)
    inside = engine_share(batcher, before, level["elapsed_s"])
    batcher.close()
    assert (inside["batches"], inside["mean_batch_pairs"]) == (4, 3.0)  # chunks of 4 and 2, one at a time
    assert 50 <= inside["engine_ms_per_batch"] <= inside["wall_ms_per_batch"]
    assert 0.5 < inside["engine_busy"] <= 1
    assert engine_share(batcher, (len(batcher.batch_sizes), batcher.busy_s), 1.0) is None


def test_triton_counters_per_batch():
    from bench.e2e import TritonCounters

    before = {"executions": 10, "pairs": 500, "execute_ns": 1_000_000_000, "input_ns": 0, "output_ns": 0,
              "engine_sum": 0.9, "engine_count": 10, "gc_sum": 0.5,
              "requests": 12, "queue_ns": 0}
    after = {"executions": 30, "pairs": 1500, "execute_ns": 3_400_000_000, "input_ns": 20_000_000,
             "output_ns": 40_000_000, "engine_sum": 3.1, "engine_count": 30, "gc_sum": 0.9,
             "requests": 52, "queue_ns": 40 * 250_000_000}
    inside = TritonCounters.between(before, after, elapsed_s=2.5)
    assert inside == {"batches": 20, "mean_batch_pairs": 50.0, "wall_ms_per_batch": 125.0,
                      "execute_ms_per_batch": 120.0, "input_ms_per_batch": 1.0, "output_ms_per_batch": 2.0,
                      "engine_ms_per_batch": 110.0, "engine_busy": 0.88, "gc_ms_per_batch": 20.0,
                      "triton_queue_ms_per_request": 250.0}
    assert TritonCounters.between(before, before, 1.0) is None  # no batch ran
    assert TritonCounters.between(None, after, 1.0) is None  # Triton's API did not answer


def test_a_failing_batch_fails_its_requests_only():
    def score(pairs):
        if any(q == "bad" for q, _ in pairs):
            raise MemoryError("out of memory")
        return [1] * len(pairs)

    batcher = Batcher(score, max_pairs=2, max_delay_s=0)
    send = request_sender(batcher, [[("bad", "d"), ("bad", "d")], [("ok", "d"), ("ok", "d")]], chunk_pairs=2)
    level = run_threads(send, concurrency=1, duration_s=60, max_requests=4)
    batcher.close()
    assert (level["requests"], level["failures"], level["pairs"]) == (4, 2, 4)


def test_model_names_resolve_like_the_gateway():
    assert resolve("qwen4b").name == resolve("Qwen3-Reranker-4B").name == "qwen3-reranker-4b"
    assert resolve("all-MiniLM-L6-v2").max_batch_size == 256
    with pytest.raises(SystemExit, match="unknown model 'gpt'"):
        resolve("gpt")


@pytest.mark.parametrize("kind,folder,max_length", [("cross_encoder", "bge-reranker-base", 512),
                                                     ("qwen3_reranker", "Qwen3-Reranker-4B", 8192),
                                                     ("bi_encoder", "all-MiniLM-L6-v2", 256)])
def test_the_seed_style_baseline_scores_like_the_engine(models_dir, kind, folder, max_length):
    """(a) is a fair baseline only if it computes the same scores, slower."""
    pairs = [(r.query, d) for r in generate(2, 4, seed=3, doc_words=(5, 40)) for d in r.documents]
    seed_scores, seed_tokens = SeedStyleScorer(models_dir / folder, kind, max_length, torch.device("cpu")).score(pairs)
    engine = load_scorer(EngineConfig(scorer=kind, weights_path=str(models_dir / folder), max_length=max_length),
                         torch.device("cpu"))
    scores = engine.score([Pair(q, d) for q, d in pairs])
    np.testing.assert_allclose(seed_scores, scores.score, atol=2e-5)
    if kind != "bi_encoder":  # the engine embeds each distinct query once; the seed style, once per pair
        assert seed_tokens == scores.num_tokens.tolist()


def _check_level(level, concurrency):
    assert level["concurrency"] == concurrency and level["requests"] == 3 and level["failures"] == 0
    assert level["pairs"] == 9 and level["pairs_per_s"] > 0
    assert level["tokens_per_s"] > 10 * level["pairs_per_s"]  # every pair is well over 10 tokens
    assert 0 < level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]


def test_ways_a_and_b_in_process(models_dir, tmp_path, capsys):
    out = tmp_path / "run"
    data = rerank_bench.main(["bge", "qwen4b", "--ways", "a", "b", "--models-dir", str(models_dir), "--out", str(out),
                              *TINY, "--baseline-concurrency", "1"])
    assert json.loads((out / "rerank_bench.json").read_text()) == data
    assert not (out / rerank_bench.PARTIAL).exists(), "the checkpoint goes once the run is complete"
    assert data["schema"] == "rerank_bench/1" and data["weights"] == "tiny random test models"
    assert [m["model"] for m in data["models"]] == ["bge-reranker-base", "qwen3-reranker-4b"]
    for model in data["models"]:
        ways = model["ways"]
        assert set(ways) == {"a", "b"}
        assert ways["a"]["dtype"] == ways["b"]["dtype"] == "float32"  # the engine serves fp32 on the CPU
        assert ways["a"]["batching"]["max_batch_pairs"] == 8
        assert ways["b"]["batching"]["max_batch_pairs"] == model["max_batch_size"]
        for result, levels in ((ways["a"], (1,)), (ways["b"], (1, 2))):
            assert result["load_s"] > 0 and "peak_gpu_mib" not in result
            for level, concurrency in zip(result["levels"], levels, strict=True):
                _check_level(level, concurrency)
            assert result["single_pair"]["requests"] == 2 and result["single_pair"]["pairs"] == 2
        # The same requests, tokenized the same way by both.
        assert ways["a"]["levels"][0]["tokens"] == ways["b"]["levels"][0]["tokens"]
        assert model["comparisons"]["b_over_a"]["concurrency"] == 1  # the highest level both ran
        assert "c_over_b" not in model["comparisons"]
    markdown = (out / "rerank_bench.md").read_text()
    assert "| (a) seed-style baseline | 1 | 3 | 0 |" in markdown and "| (b) engine direct | 2 | 3 | 0 |" in markdown
    assert "| (a) seed-style baseline | 2 |" not in markdown
    for name in ("rerank_bench.png", "rerank_bench_time.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert str(out / "rerank_bench.md") in capsys.readouterr().out


def test_a_run_stopped_during_way_c_keeps_ways_a_and_b(models_dir, tmp_path, monkeypatch):
    from bench import e2e

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # as a `timeout` or Ctrl-C would stop way (c)

    monkeypatch.setattr(e2e, "run", stopped)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        rerank_bench.main(["bge", "--ways", "a", "b", "c", "--models-dir", str(models_dir), "--out", str(out),
                           *TINY, "--baseline-concurrency", "1"])
    assert not (out / "rerank_bench.json").exists()
    kept = json.loads((out / rerank_bench.PARTIAL).read_text())
    ways = kept["models"][0]["ways"]
    assert set(ways) == {"a", "b"}
    assert ways["b"]["levels"][1]["concurrency"] == 2 and ways["b"]["levels"][1]["failures"] == 0


@pytest.mark.integration
def test_ways_b_and_c_through_reranker_serve(models_dir, tmp_path):
    out = tmp_path / "run"
    data = rerank_bench.main(["bge-reranker-base", "--ways", "b", "c", "--models-dir", str(models_dir),
                              "--out", str(out), "--stack-timeout", "240", *TINY])
    ways = data["models"][0]["ways"]
    assert "error" not in ways["c"], ways["c"].get("error")
    for level, concurrency in zip(ways["c"]["levels"], (1, 2), strict=True):
        _check_level(level, concurrency)
    # The gateway's usage.total_tokens is the engine's num_tokens: the same requests, the same count.
    assert [lv["tokens"] for lv in ways["c"]["levels"]] == [lv["tokens"] for lv in ways["b"]["levels"]]
    assert ways["c"]["load_s"] > 0  # read from the gateway's start-up log line
    assert ways["c"]["dtype"] == "float32"
    comparisons = data["models"][0]["comparisons"]
    assert comparisons["c_over_b"]["concurrency"] == 2 and comparisons["c_over_b"]["pairs_per_s_ratio"] > 0
    assert "meets_goal" in comparisons["c_over_b"]
    assert comparisons["c_single_pair_p50_ms"] == ways["c"]["single_pair"]["p50_ms"] > 0
    assert "Uvicorn running" in (out / "serve.log").read_text()
    assert "| (c) gateway + Triton | 2 | 3 | 0 |" in (out / "rerank_bench.md").read_text()
    # Triton's own counters: 3 requests of 3 documents at each level, each one chunk (bge batches up to 256).
    for level in ways["c"]["levels"]:
        inside = level["triton"]
        assert 1 <= inside["batches"] <= 3 and inside["mean_batch_pairs"] * inside["batches"] == 9
        assert 0 < inside["engine_ms_per_batch"] <= inside["execute_ms_per_batch"] <= inside["wall_ms_per_batch"]
        assert 0 < inside["engine_busy"] <= 1 and inside["gc_ms_per_batch"] >= 0
        assert inside["triton_queue_ms_per_request"] >= 0
    assert "| (c) gateway + Triton | 2 | " in (out / "rerank_bench.md").read_text().split("Engine busy")[1]


def test_weights_are_labelled_random_when_random_models_built_them(tmp_path):
    from bench.models import RANDOM_WEIGHTS_MARKER

    assert rerank_bench.weights_label(tmp_path, False, None).startswith("real weights")
    assert rerank_bench.weights_label(tmp_path, True, None).startswith("random weights")
    (tmp_path / RANDOM_WEIGHTS_MARKER).write_text("random")
    assert rerank_bench.weights_label(tmp_path, False, None).startswith("random weights")
    assert rerank_bench.weights_label(tmp_path, False, "mine") == "mine"


def test_a_gateway_only_run_needs_no_torch_and_reports_an_unreachable_gateway(tmp_path, monkeypatch):
    for module in ("torch", "transformers"):
        monkeypatch.setitem(sys.modules, module, None)  # `import torch` now raises ImportError
    out = tmp_path / "run"
    data = rerank_bench.main(["bge", "--ways", "c", "--gateway-url", "http://127.0.0.1:9", "--out", str(out),
                              "--concurrency", "1", "--requests", "1", "--single-pair-requests", "0"])
    assert "ConnectError" in data["models"][0]["ways"]["c"]["error"]
    assert "torch" not in data["environment"]
    assert "| (c) gateway + Triton |" in (out / "rerank_bench.md").read_text()


def test_a_default_model_that_cannot_load_fails_the_stack_start_at_once(tmp_path):
    """The gateway stays up, never ready: waiting for the deadline (15 min) would hide the reason."""
    import subprocess

    from bench.e2e import ServeProcess
    from launcher.process import free_ports

    serve = object.__new__(ServeProcess)
    serve.url = f"http://127.0.0.1:{free_ports(1)[0]}"
    serve.log = tmp_path / "serve.log"
    serve.log.write_text("... ERROR gateway.serving.model_manager: default model qwen3-reranker-8b is not active: "
                         "models/Qwen3-Reranker-8B is missing\n")
    serve.process = subprocess.Popen(["sleep", "30"])
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="Qwen3-Reranker-8B is missing"):
            serve._wait_ready(timeout_s=60)
        assert time.monotonic() - started < 5
    finally:
        serve.process.kill()
        serve.process.wait()


@pytest.mark.parametrize("kind,folder,max_length", [("cross_encoder", "bge-reranker-base", 512),
                                                     ("qwen3_reranker", "Qwen3-Reranker-4B", 8192),
                                                     ("bi_encoder", "all-MiniLM-L6-v2", 256)])
def test_the_library_baseline_scores_like_the_engine(models_dir, kind, folder, max_length):
    """(d) is the strongest fair baseline only if it computes the same scores."""
    from bench.baseline import LIBRARY_BATCH_SIZES, LibraryScorer

    pairs = [(r.query, d) for r in generate(3, 4, seed=5, doc_words=(5, 40)) for d in r.documents]
    library = LibraryScorer(models_dir / folder, kind, max_length, torch.device("cpu"))
    best = library.tune(pairs, rounds=1)
    assert best in LIBRARY_BATCH_SIZES[kind] and set(library.sweep) == set(LIBRARY_BATCH_SIZES[kind])
    library.batch_size = 4  # several batches: the length sort must put every score back in its place
    scores, tokens = library.score(pairs)
    engine = load_scorer(EngineConfig(scorer=kind, weights_path=str(models_dir / folder), max_length=max_length),
                         torch.device("cpu"))
    want = engine.score([Pair(q, d) for q, d in pairs])
    np.testing.assert_allclose(scores, want.score, atol=2e-5)
    if kind != "bi_encoder":
        assert tokens == want.num_tokens.tolist()


def test_way_d_in_process_and_the_headline_ratio(models_dir, tmp_path):
    out = tmp_path / "run"
    data = rerank_bench.main(["bge", "--ways", "b", "d", "--models-dir", str(models_dir), "--out", str(out), *TINY])
    ways = data["models"][0]["ways"]
    assert ways["d"]["dtype"] == "float32" and ways["d"]["batching"]["batch_size"] in (16, 32, 64, 128, 256)
    for level, concurrency in zip(ways["d"]["levels"], (1, 2), strict=True):
        _check_level(level, concurrency)
    assert ways["d"]["levels"][0]["tokens"] == ways["b"]["levels"][0]["tokens"]
    # The headline compares the server (c) with the libraries (d); without (c) there is none.
    assert "c_over_d" not in data["models"][0]["comparisons"]
    assert report.comparisons({"ways": {"c": {"levels": [{"concurrency": 8, "pairs_per_s": 300.0}]},
                                        "d": {"levels": [{"concurrency": 8, "pairs_per_s": 100.0}]}}}
                              )["c_over_d"]["pairs_per_s_ratio"] == 3.0
    assert "| (d) libraries, no server | 2 | 3 | 0 |" in (out / "rerank_bench.md").read_text()


def test_a_repository_copy_with_another_instance_count(tmp_path):
    from bench.models import MODEL_REPOSITORY, repository_with_instances
    from rerank_engine.model_config import ModelConfig, repository_models

    copy = repository_with_instances(MODEL_REPOSITORY, tmp_path / "repo", 4)
    assert {c.instance_count for c in repository_models(copy).values()} == {4}
    same = repository_with_instances(MODEL_REPOSITORY, tmp_path / "same", 1)  # a count some models have already
    assert {c.instance_count for c in repository_models(same).values()} == {1}
    assert ModelConfig.from_pbtxt(copy / "bge-reranker-base" / "configs" / "gpu.pbtxt").instance_count == 4
    link = copy / "bge-reranker-base" / "1" / "model.py"
    assert link.is_symlink() and link.resolve() == (copy / "reranker_model.py").resolve()


def test_runs_of_different_ways_merge_into_one_result(models_dir, tmp_path):
    first = rerank_bench.main(["bge", "--ways", "b", "--models-dir", str(models_dir), "--out", str(tmp_path / "b"),
                               *TINY])
    rerank_bench.main(["bge", "--ways", "a", "--models-dir", str(models_dir), "--out", str(tmp_path / "a"), *TINY])
    merged = rerank_bench.main(["--merge", str(tmp_path / "b" / "rerank_bench.json"),
                                str(tmp_path / "a" / "rerank_bench.json"), str(tmp_path / "both")])
    assert set(merged["models"][0]["ways"]) == {"a", "b"} and set(merged["ways"]) == {"a", "b"}
    assert merged["models"][0]["ways"]["b"] == first["models"][0]["ways"]["b"]
    assert merged["models"][0]["comparisons"]["b_over_a"]["concurrency"] == 2
    assert len(merged["merged_from"]) == 2 and (tmp_path / "both" / "rerank_bench.md").exists()
