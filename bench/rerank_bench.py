"""The rerank benchmark: each model measured four ways side by side, in one run,
on the same workload and the same closed-loop clients:

  (a) seed-style baseline: the seed's scoring in plain transformers (fp32,
      8-pair batches in arrival order, Qwen3's full-vocabulary logits), in
      this process (bench.baseline);
  (b) engine direct: rerank_engine's load_scorer + scorer.score in this
      process, behind a batcher that does what the gateway's fan-out and
      Triton's dynamic batcher do (bench.inprocess);
  (c) end to end: HTTP /v1/rerank through the gateway and Triton, started
      here with `reranker serve` or already running at --gateway-url (bench.e2e);
  (d) the strongest baseline users run without a server: sentence-transformers
      in fp16 for the encoders, the Qwen3 model card's recipe in bf16 with
      length-sorted batches, each at its best batch size (bench.baseline).

For each model and way: load time, peak GPU memory, and per concurrency level
requests, pairs/s, tokens/s and latency p50/p90/p99; a single-pair latency
level at concurrency 1; at the top concurrency (c)/(d), the headline (how much
the server gains over the libraries), and (c)/(b) (the goal: gateway + Triton
cost <= 10% of the engine's throughput at saturation).
Writes rerank_bench.json, rerank_bench.md and PNG plots (launcher.report) into --out.

  python -m bench.random_models --models-dir /tmp/models --tokenizers ../shared/data/tokenizers bge-reranker-base
  python -m bench.rerank_bench --models-dir /tmp/models bge-reranker-base --out /tmp/bench
  python -m bench.rerank_bench --ways c --gateway-url http://localhost:8000 bge   # a running gateway only
  python -m bench.rerank_bench --merge RUN1/rerank_bench.json RUN2/rerank_bench.json OUT_DIR   # ways of two runs
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bench.inprocess import Batcher, engine_share, request_sender
from bench.loadgen import run_threads
from bench.models import MODEL_REPOSITORY, RANDOM_WEIGHTS_MARKER, REPO_ROOT, repository_with_instances, resolve
from bench.workload import QUERY_WORDS, Request, describe, generate
from launcher import report
from rerank_engine.model_config import ModelConfig

SCHEMA = "rerank_bench/1"
DEFAULT_TOKENIZERS = REPO_ROOT.parent / "shared" / "data" / "tokenizers"


@dataclass
class Settings:
    concurrency: list[int]
    duration_s: float
    requests: int | None
    warmup: int
    single_pair_requests: int
    bin_s: float
    request_timeout_s: float
    stack_timeout_s: float
    gateway_url: str | None
    gpu_memory_period_s: float
    model_repository: Path
    models_dir: Path


def log(message: str) -> None:
    print(f"[rerank_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# (a), (b) and (d): in this process


def _pairs(requests: list[Request]) -> list[list[tuple[str, str]]]:
    return [[(r.query, d) for d in r.documents] for r in requests]


@dataclass
class InProcessWay:
    """What a way scores with, and how the batcher feeds it."""

    score: Callable[[list[tuple[str, str]]], list[int]]  # pairs -> tokens per pair
    dtype: str
    chunk_pairs: int  # pairs per submitted chunk (a request is cut into chunks)
    max_pairs: int  # pairs per scoring call
    window_s: float
    notes: dict


def _seed_style(spec: ModelConfig, folder: Path, device) -> InProcessWay:
    import torch

    from bench.baseline import SEED_BATCH_PAIRS, SEED_BATCH_WINDOW_S, SeedStyleScorer

    # torch's default, as the seed ran; the engine's load_scorer turns cuDNN attention off process-wide.
    torch.backends.cuda.enable_cudnn_sdp(True)
    scorer = SeedStyleScorer(folder, spec.scorer, spec.max_length, device)
    return InProcessWay(lambda pairs: scorer.score(pairs)[1], "float32", 1, SEED_BATCH_PAIRS, SEED_BATCH_WINDOW_S, {})


def _engine(spec: ModelConfig, folder: Path, device, engine_params: dict[str, str]) -> InProcessWay:
    from rerank_engine.engine import EngineConfig, load_scorer
    from rerank_engine.pairs import Pair

    # As model_repository/reranker_model.py builds it, from the same config.pbtxt parameters.
    config = EngineConfig.from_parameters({**spec.parameters, **engine_params}, spec.max_batch_size, spec.name)
    scorer = load_scorer(dataclasses.replace(config, weights_path=str(folder)), device)
    dtype = str(config.torch_dtype(device)).removeprefix("torch.")
    return InProcessWay(lambda pairs: scorer.score([Pair(q, d) for q, d in pairs]).num_tokens.tolist(), dtype,
                        spec.max_batch_size, spec.max_batch_size, spec.max_queue_delay_us / 1e6,
                        {"engine_params": engine_params or None})


def _libraries(spec: ModelConfig, folder: Path, device, pool: list[Request], docs: int) -> InProcessWay:
    from bench.baseline import LibraryScorer

    scorer = LibraryScorer(folder, spec.scorer, spec.max_length, device)
    best = scorer.tune([pair for pairs in _pairs(pool[:8]) for pair in pairs])
    log(f"(d) {spec.name}: batch size {best} ({scorer.sweep} pairs/s)")
    # Whole requests go in; a scoring call takes as many as fit the best batch size (at least one).
    return InProcessWay(lambda pairs: scorer.score(pairs)[1], scorer.dtype, docs, max(best, docs), 0.005,
                        {"batch_size": best, "batch_size_sweep_pairs_per_s": scorer.sweep})


def run_inprocess(way: str, spec: ModelConfig, folder: Path, pool: list[Request], singles: list[Request],
                  settings: Settings, device_name: str, engine_params: dict[str, str]) -> dict:
    import torch

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    if way == "a":
        chosen = _seed_style(spec, folder, device)
    elif way == "b":
        chosen = _engine(spec, folder, device, engine_params)
    else:
        chosen = _libraries(spec, folder, device, pool, len(pool[0].documents))
    score, dtype, chunk, max_pairs, delay_s = (chosen.score, chosen.dtype, chosen.chunk_pairs, chosen.max_pairs,
                                               chosen.window_s)
    policy = {"chunk_pairs": chunk, "max_batch_pairs": max_pairs, "window_s": delay_s, **chosen.notes}
    if cuda:
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - started
    log(f"({way}) {spec.name}: loaded in {load_s:.1f} s as {dtype} on {device}")
    batcher = Batcher(score, max_pairs, delay_s)
    try:
        send = request_sender(batcher, _pairs(pool), chunk)
        for number in range(settings.warmup):
            send(number)
        levels = []
        for concurrency in settings.concurrency:
            before = (len(batcher.batch_sizes), batcher.busy_s)
            levels.append(run_threads(send, concurrency, settings.duration_s, settings.requests, settings.bin_s))
            if inside := engine_share(batcher, before, levels[-1]["elapsed_s"]):
                levels[-1]["engine"] = inside
            log(f"({way}) {spec.name} c={concurrency}: {_brief(levels[-1])}")
        result = {"load_s": round(load_s, 2), "dtype": dtype, "device": str(device), "batching": policy,
                  "levels": levels}
        if singles:
            result["single_pair"] = run_threads(request_sender(batcher, _pairs(singles), chunk), 1,
                                                settings.duration_s, settings.single_pair_requests, settings.bin_s)
        result["batches"] = len(batcher.batch_sizes)
        result["mean_batch_pairs"] = round(sum(batcher.batch_sizes) / max(len(batcher.batch_sizes), 1), 2)
        if cuda:
            result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            result["peak_gpu_mib_note"] = "torch.cuda.max_memory_allocated from before loading to the end"
        return result
    finally:
        batcher.close()
        scorer = None  # the model's memory goes back before the next way loads
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def _brief(level: dict) -> str:
    return (f"{level['requests']} requests, {level['failures']} failed, {level['pairs_per_s']} pairs/s, "
            f"p50 {level['p50_ms']} ms, p99 {level['p99_ms']} ms")


# ---------------------------------------------------------------------------------------------
# Labels and environment


def weights_label(folder: Path, random_weights: bool, override: str | None) -> str:
    if override:
        return override
    if random_weights or (folder / RANDOM_WEIGHTS_MARKER).exists():
        return "random weights of the real architecture and size, real tokenizer (bench.random_models): speed only"
    return f"real weights ({folder}; no bench.random_models marker)"


def environment(device_name: str | None) -> dict:
    env = {"python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count(), "device": "cpu"}
    try:
        import torch
        import transformers

        env["torch"], env["transformers"] = torch.__version__, transformers.__version__
        if device_name and device_name.startswith("cuda") and torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name(torch.device(device_name))
    except ImportError:
        import shutil
        import subprocess

        if shutil.which("nvidia-smi"):
            env["device"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
                                           capture_output=True, text=True).stdout.strip() or "n/a"
    return env


def _default_device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _has_gpu() -> bool:
    """Whether Triton's KIND_AUTO will place models on a GPU here (torch may be absent for a (c)-only run)."""
    import shutil

    try:
        import torch
    except ImportError:
        return shutil.which("nvidia-smi") is not None
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("models", nargs="+", help="Triton names, aliases (bge, qwen4b, ...) or weights folders")
    parser.add_argument("--ways", nargs="+", choices=("a", "b", "c", "d"), default=["a", "b", "c", "d"])
    parser.add_argument("--models-dir", type=Path, default=Path(os.environ.get("RERANKER_MODELS_DIR", "models")))
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--random-weights", action="store_true",
                        help="build random-weight models of the real architectures into --models-dir first "
                             "(bench.random_models; kept if already there) and label the results so")
    parser.add_argument("--tokenizers", type=Path, default=DEFAULT_TOKENIZERS, help="for --random-weights")
    parser.add_argument("--weights-label", help="label for the weights in the output (default: detected)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--baseline-concurrency", type=int, nargs="+",
                        help="levels for (a) only, which is slow on large models (default: --concurrency); "
                             "(b)/(a) is then compared at the highest level both ran")
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--doc-tokens", type=int, nargs=2, default=(64, 256), metavar=("MIN", "MAX"))
    parser.add_argument("--pool", type=int, default=64, help="distinct requests, sent round robin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of each level (each client's first request is always sent)")
    parser.add_argument("--requests", type=int, help="requests per level instead of a duration")
    parser.add_argument("--warmup", type=int, default=2, help="requests sent one by one before the levels")
    parser.add_argument("--single-pair-requests", type=int, default=50,
                        help="requests of 1 query x 1 document at concurrency 1 (0: skip)")
    parser.add_argument("--bin", type=float, default=1.0, help="seconds per point of the timelines")
    parser.add_argument("--device", default=None, help="for (a) and (b): cuda:0 where there is a GPU, else cpu")
    parser.add_argument("--engine-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config.pbtxt parameter for (b) only (e.g. prefix_reuse=false)")
    parser.add_argument("--gateway-url", help="for (c): a running gateway instead of starting reranker serve")
    parser.add_argument("--instances", type=int,
                        help="for (c): run every model with this many Triton instances per device (a copy of the "
                             "repository with instance_group's count changed)")
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--stack-timeout", type=float, default=900.0, help="start-up and model switch deadline")
    parser.add_argument("--gpu-memory-period", type=float, default=0.25,
                        help="(c): seconds between nvidia-smi samples of device memory under load (0: none, only the "
                             "load's own peak)")
    parser.add_argument("--out", type=Path, help="default: bench_results/rerank-<UTC time>")
    args = parser.parse_args(argv)
    if min(args.concurrency + (args.baseline_concurrency or [])) < 1 or args.docs < 1 or args.pool < 1:
        parser.error("--concurrency, --docs and --pool must be positive")
    return args


PARTIAL = "rerank_bench.partial.json"
"""Written after each in-process way, removed once rerank_bench.json is written."""


WAY_TEXTS = {
    "a": "the seed's recipe in plain transformers, fp32; single pairs queued, at most 8 per forward pass "
         "in arrival order (no length sorting), padded per batch; Qwen3 reads the full-vocabulary "
         "logits; C client threads in this process",
    "b": "rerank_engine (load_scorer + score) in this process, dtype as config.pbtxt says; requests cut "
         "into chunks of max_batch_size pairs and merged by one worker into batches of at most "
         "max_batch_size pairs within max_queue_delay (the gateway's fan-out and Triton's dynamic "
         "batcher, emulated); C client threads",
    "c": "HTTP POST /v1/rerank through the gateway and Triton{where}; C asyncio clients (httpx), latency "
         "measured at the client",
    "d": "what users run without a server, in this process: sentence-transformers (CrossEncoder for bge, "
         "SentenceTransformer for MiniLM) in fp16, or the Qwen3 model card's transformers recipe in bf16 "
         "with length-sorted batches; at the best batch size found at load; whole requests merged by one "
         "worker up to that size; C client threads",
}


def build_random_weights(args: argparse.Namespace, specs: list[ModelConfig]) -> None:
    import torch

    from bench.random_models import ARCHITECTURES, build

    for spec in specs:
        if spec.weights_folder not in ARCHITECTURES:
            raise SystemExit(f"no random-weight architecture for {spec.weights_folder}; give it real weights")
        log(f"building random weights for {spec.weights_folder} (kept if already built)")
        build(spec.weights_folder, args.models_dir, args.tokenizers,
              "cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16)


def run_header(args: argparse.Namespace, argv: list[str] | None, started_at: datetime, specs: list[ModelConfig],
               device: str | None, settings: Settings, baseline: Settings) -> dict:
    """Everything the JSON says about the run before any figure: command, environment, workload, ways."""
    doc_words = tuple(args.doc_tokens)
    labels = {spec.name: weights_label(spec.weights_dir(args.models_dir), args.random_weights, args.weights_label)
              for spec in specs}
    level_rule = (f"{args.requests} requests per level" if args.requests else
                  f"{args.duration:g} s per level, each client's first request always sent")
    where = f" at {args.gateway_url}" if args.gateway_url else " (reranker serve started here)"
    return {
        "schema": SCHEMA,
        "started": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.rerank_bench", *(argv if argv is not None else sys.argv[1:])]),
        "environment": environment(device),
        "weights": labels[specs[0].name] if len(set(labels.values())) == 1 else "see each model",
        "settings": {
            "ways": args.ways, "concurrency": settings.concurrency,
            "baseline_concurrency": baseline.concurrency, "docs": args.docs, "doc_tokens": list(doc_words),
            "query_tokens": QUERY_WORDS + 2, "pool": args.pool, "seed": args.seed, "duration_s": args.duration,
            "requests": args.requests, "warmup": args.warmup, "single_pair_requests": args.single_pair_requests,
            "device": device, "gateway_url": args.gateway_url, "workload": describe(args.docs, doc_words),
            "instances": args.instances or "as config.pbtxt (or configs/gpu.pbtxt on a GPU) says",
            "level_rule": level_rule,
        },
        "ways": {way: text.format(where=where) for way, text in WAY_TEXTS.items() if way in args.ways},
        "models": [
            {"model": spec.name, "folder": spec.weights_folder, "scorer": spec.scorer, "weights": labels[spec.name],
             "max_batch_size": spec.max_batch_size, "precision": spec.precision, "ways": {}}
            for spec in specs
        ],
    }


def measure(args: argparse.Namespace, specs: list[ModelConfig], data: dict, out: Path, device: str | None,
            settings: Settings, baseline: Settings, pool: list[Request], singles: list[Request]) -> None:
    """Every way of every model into `data`: the in-process ways model by model, then (c) through one stack."""
    entries = {entry["model"]: entry for entry in data["models"]}
    engine_params = dict(item.split("=", 1) for item in args.engine_param)
    for spec in specs:
        for way in [w for w in ("a", "b", "d") if w in args.ways]:
            try:
                entries[spec.name]["ways"][way] = run_inprocess(
                    way, spec, spec.weights_dir(args.models_dir), pool, singles,
                    baseline if way == "a" else settings, device, engine_params if way == "b" else {})
            except Exception as exc:  # one way's failure (out of memory, say) must not lose the rest
                log(f"({way}) {spec.name} failed: {exc!r}")
                entries[spec.name]["ways"][way] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            # A run stopped part-way (a `timeout`, a lost machine) still leaves what it measured.
            (out / PARTIAL).write_text(json.dumps(data, indent=1))
    if "c" in args.ways:
        from bench import e2e

        on_gpu = _has_gpu()
        for name, result in e2e.run(specs, pool, singles, settings, out, progress=log).items():
            result.setdefault("dtype", next(s for s in specs if s.name == name).serving_dtype(on_gpu))
            entries[name]["ways"]["c"] = result


def write_results(data: dict, out: Path) -> None:
    for entry in data["models"]:
        entry["comparisons"] = report.comparisons(entry)
    data["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    path = out / "rerank_bench.json"
    path.write_text(json.dumps(data, indent=1))
    (out / PARTIAL).unlink(missing_ok=True)
    for file in [path, *report.render_bench(data, out, "rerank_bench")]:
        print(file)


def merge(paths: list[Path], out: Path) -> dict:
    """One result from runs of different ways on the same machine and workload (say (d) run by another
    Python, whose packages (sentence-transformers' scipy and scikit-learn) the serving environment lacks)."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    data = runs[0]
    entries = {entry["model"]: entry for entry in data["models"]}
    for run in runs[1:]:
        for key in ("docs", "doc_tokens", "pool", "seed"):
            if run["settings"][key] != data["settings"][key]:
                raise SystemExit(f"cannot merge: {key} differs ({run['settings'][key]} vs {data['settings'][key]})")
        data["ways"].update(run["ways"])
        for entry in run["models"]:
            entries.setdefault(entry["model"], {**entry, "ways": {}})["ways"].update(entry["ways"])
    data["models"] = list(entries.values())
    data["merged_from"] = [{"command": run["command"], "environment": run["environment"]} for run in runs]
    out.mkdir(parents=True, exist_ok=True)
    write_results(data, out)
    return data


def main(argv: list[str] | None = None) -> dict:
    if argv is None and sys.argv[1:2] == ["--merge"] or argv and argv[0] == "--merge":
        merging = (argv if argv is not None else sys.argv[1:])[1:]
        return merge([Path(p) for p in merging[:-1]], Path(merging[-1]))
    args = parse_args(argv)
    started_at = datetime.now(timezone.utc)
    out = args.out or Path("bench_results") / f"rerank-{started_at:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    specs = [resolve(name, args.model_repository) for name in args.models]
    device = args.device or (_default_device() if {"a", "b", "d"} & set(args.ways) else None)
    if args.random_weights:
        build_random_weights(args, specs)
    repository = args.model_repository
    if args.instances:
        repository = repository_with_instances(repository, out / "model_repository", args.instances)
    settings = Settings(
        concurrency=sorted(set(args.concurrency)), duration_s=args.duration, requests=args.requests,
        warmup=args.warmup, single_pair_requests=args.single_pair_requests, bin_s=args.bin,
        request_timeout_s=args.request_timeout, stack_timeout_s=args.stack_timeout, gateway_url=args.gateway_url,
        gpu_memory_period_s=args.gpu_memory_period, model_repository=repository, models_dir=args.models_dir,
    )
    baseline = dataclasses.replace(settings, concurrency=sorted(set(args.baseline_concurrency or args.concurrency)))
    pool = generate(args.pool, args.docs, args.seed, tuple(args.doc_tokens))
    # A few distinct single pairs (none for --single-pair-requests 0), sent round robin like the pool.
    singles = generate(min(args.single_pair_requests, 16), 1, args.seed + 1, tuple(args.doc_tokens))
    data = run_header(args, argv, started_at, specs, device, settings, baseline)
    measure(args, specs, data, out, device, settings, baseline, pool, singles)
    write_results(data, out)
    return data


if __name__ == "__main__":
    main()
