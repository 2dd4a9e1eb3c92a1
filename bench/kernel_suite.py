"""Issue 22's GPU measurements, as steps of one device call (`bench/kernel_suite.sh`
runs each under its own time limit; one failing step or variant leaves the
others' results):

- `env`: the card, the libraries;
- `dense`: the card's limits in the same run: large fp16/bf16 (and FP8) products'
  TFLOP/s, the products at bge's own shapes, the copy bandwidth;
- `check`: every Triton kernel against its PyTorch fallback on the GPU, on the
  test cases (tests/engine/kernel_cases.py) and on fresh random inputs at the
  real shapes, with every output buffer poisoned (NaN bytes) before the kernel
  writes it, so an element it never writes shows; then the repository's own
  GPU kernel tests (pytest);
- `bge`: bge-reranker-base's engine, each variant (config.pbtxt's parameters plus
  the variant's) side by side: the reference packed path, each fusion, packed
  CUDA graphs, the tokenize/launch pipeline, all together; per variant the
  engine way (b) at c=64 as `bench.rerank_bench` runs it, the engine called
  one request at a time, kernel time by kind and launches per request, the
  largest score change against the float32 model, and peak GPU memory;
- `qwen`: Qwen3-Reranker-4B FP8's engine with each `silu_mul_quant` method
  (the first-shipped `two_pass_exact` against the others), the same figures;
- `compile`: bge with `torch.compile` of its layers (compile time included);
- `table`: everything merged into one JSON, each throughput also as a share of
  the dense limit (the floors of `bench.floors`), and a short table printed.

`--device cpu --tiny` runs every step on the CPU with the tests' tiny models
(the kernels under Triton's interpreter where TRITON_INTERPRET=1): a smoke
run, so a device call is not lost to a typo. Figures from it mean nothing.

  python -m bench.kernel_suite bge --models-dir /tmp/models --work /tmp/kernel_suite
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench import floors

BGE_VARIANTS = [
    # (name, config.pbtxt parameters over the shipped ones): the reference first and again last (drift);
    # each fusion alone, then all, then graphs and the pipeline alone, then everything (with and without
    # the tanh-approximated GELU).
    ("reference", {}),
    ("embed_norm", {"fusions": "embed_norm"}),
    ("add_norm", {"fusions": "add_norm"}),
    ("gelu_epilogue", {"fusions": "gelu_epilogue"}),
    ("fusions_all", {"fusions": "all"}),
    ("packed_graphs", {"packed_graphs": "true"}),
    ("pipeline_64", {"pipeline_pairs": "64"}),
    ("all_exact_gelu", {"fusions": "embed_norm,add_norm", "packed_graphs": "true", "pipeline_pairs": "32"}),
    ("all", {"fusions": "all", "packed_graphs": "true", "pipeline_pairs": "32"}),
    ("reference_again", {}),
]
COMPILE_VARIANTS = [
    ("compile", {"compile": "true", "fusions": "embed_norm"}),
    ("compile_all", {"compile": "true", "fusions": "embed_norm,gelu_epilogue", "packed_graphs": "true",
                     "pipeline_pairs": "32"}),
]
QWEN_METHODS = ("two_pass_exact", "one_pass", "split", "two_pass")


def log(message: str) -> None:
    print(f"[kernel_suite {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write(args: argparse.Namespace, step: str, data) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / f"{step}.json").write_text(json.dumps(data, indent=1, default=str) + "\n")


def timed_us(call, rounds: int, device: torch.device) -> float:
    from bench.kernel_bench import timed_us as timed

    return timed(call, rounds, device)


# ---------------------------------------------------------------------------------------------
# env, dense


def step_env(args, device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "cpus": os.cpu_count(), "device": str(device), "tiny": args.tiny}
    with contextlib.suppress(ImportError):
        import triton

        env["triton"] = triton.__version__
    with contextlib.suppress(ImportError):
        import tokenizers

        env["tokenizers"] = tokenizers.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(device)),
                   gpu_mib=props.total_memory // 2**20, cuda=torch.version.cuda)
    env["interpreter"] = os.environ.get("TRITON_INTERPRET") == "1"
    return env


def step_dense(args, device) -> dict:
    """The card's dense limits: what each throughput is read against."""
    from bench.kernel_bench import copy_gb_per_s

    cuda = device.type == "cuda"
    n, rounds = (8192, 10) if cuda else (256, 3)
    result: dict = {"square_n": n}
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        dtype = dtype if cuda else torch.float32
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        result[f"{name}_tflop_per_s"] = round(2 * n**3 / timed_us(lambda: a @ b, rounds, device) / 1e6, 1)
    tokens = 18432 if cuda else 256
    shapes = {"qkv": (768, 2304), "o": (768, 768), "up": (768, 3072), "down": (3072, 768)}
    dtype = torch.float16 if cuda else torch.float32
    result["bge_shapes_tokens"] = tokens
    for name, (k, m) in shapes.items():
        x, w = torch.randn(tokens, k, dtype=dtype, device=device), torch.randn(m, k, dtype=dtype, device=device)
        result[f"bge_{name}_tflop_per_s"] = round(2 * tokens * k * m / timed_us(lambda: x @ w.t(), rounds, device)
                                                  / 1e6, 1)
    from rerank_engine.fp8 import Fp8Weight, fp8_linear, scaled_mm_available

    if scaled_mm_available(device):
        from rerank_engine.fp8_recipe import quantize_rows

        for label, (m, k, nn) in (("square", (n, n, n)), ("qwen4b_gate_up", (8192, 2560, 19456))):
            xq, xs = quantize_rows(torch.randn(m, k, device=device))
            wq, ws = quantize_rows(torch.randn(nn, k, device=device))
            weight = Fp8Weight(wq.contiguous(), ws.reshape(-1).contiguous())
            us = timed_us(lambda: fp8_linear(xq, xs, weight), rounds, device)
            result[f"fp8_{label}_tflop_per_s"] = round(2 * m * k * nn / us / 1e6, 1)
    result["copy_gb_per_s"] = copy_gb_per_s(device, 1024 if cuda else 64, 20 if cuda else 3)
    return result


# ---------------------------------------------------------------------------------------------
# check


@contextlib.contextmanager
def poisoned_outputs():
    """torch.empty / empty_like return buffers filled with 0xFF bytes (NaN in every float format, E4M3's
    included) while the kernels run: an element a kernel never writes stays NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor):
        if tensor.numel() and tensor.is_contiguous():
            tensor.view(-1).view(torch.uint8).fill_(0xFF)
        return tensor

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def _fresh_cases(tiny: bool) -> dict:
    """Fresh random inputs (a new seed each run) at the real shapes: name -> (kernel, options, inputs maker)."""
    g = torch.Generator().manual_seed(time.time_ns() % 2**31)
    t = 8 if tiny else 2048

    def randn(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    cases = {}
    for intermediate in (9728, 12288):
        for method in ("one_pass", "split", "two_pass", "two_pass_exact"):
            cases[f"silu_mul_quant/{method}/{intermediate}"] = (
                "silu_mul_quant", {"method": method}, lambda i=intermediate: {"gate_up": randn(t, 2 * i, scale=4)})
        cases[f"silu_mul/{intermediate}"] = ("silu_mul", {}, lambda i=intermediate: {"gate_up": randn(t, 2 * i, scale=4)})
    for hidden in (2560, 4096):
        cases[f"rms_norm_quant/{hidden}"] = ("rms_norm_quant", {}, lambda h=hidden: {
            "x": randn(t, h, scale=3), "weight": torch.rand(h, generator=g).to(torch.bfloat16) + 0.5, "eps": 1e-6,
            "residual": randn(t, h, scale=10)})
    cases["per_token_quant/4096"] = ("per_token_quant", {}, lambda: {"x": randn(t, 4096, scale=5)})
    tokens = 64 if tiny else 18432
    cases["add_layer_norm/768"] = ("add_layer_norm", {}, lambda: {
        "y": randn(tokens, 768, dtype=torch.float16, scale=2), "residual": randn(tokens, 768, dtype=torch.float16, scale=3),
        "weight": torch.rand(768, generator=g).half() + 0.5, "shift": randn(768, dtype=torch.float16, scale=0.1),
        "eps": 1e-5, "bias": randn(768, dtype=torch.float16, scale=0.5)})
    vocabulary = 1000 if tiny else 250002
    cases["embed_layer_norm/768"] = ("embed_layer_norm", {}, lambda: {
        "ids": torch.randint(0, vocabulary, (tokens,), generator=g),
        "positions": torch.randint(2, 514, (tokens,), generator=g),
        "word": randn(vocabulary, 768, dtype=torch.float16), "position": randn(514, 768, dtype=torch.float16),
        "token_type": randn(768, dtype=torch.float16, scale=0.2),
        "weight": torch.rand(768, generator=g).half() + 0.5, "shift": randn(768, dtype=torch.float16, scale=0.1),
        "eps": 1e-5})
    return cases


def _compare(kernel: str, got: tuple, want: tuple, name: str) -> dict:
    """The checks of tests/engine/test_kernels.py, as a record instead of an assertion."""
    from tests.engine.test_kernels import BF16_HALF_STEP, FP16_HALF_STEP, _assert_fp8_match

    record = {"case": name, "kernel": kernel}
    try:
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype, f"shape/dtype {g.shape} {g.dtype} vs {w.shape} {w.dtype}"
            assert not g.float().isnan().any(), "NaN in the output: an element was never written (poison)"
        if kernel in ("rms_norm_quant", "silu_mul_quant", "per_token_quant"):
            same = (got[0].view(torch.uint8) == want[0].view(torch.uint8)).double().mean().item()
            record["fp8_bit_identical"] = round(same, 7)
            record["scale_max_rel_diff"] = float(((got[1] - want[1]).abs() / want[1]).max())
            _assert_fp8_match(got[0], got[1], want[0], want[1], name)
            if len(got) == 3:
                assert torch.equal(got[2], want[2]), "residual stream"
        else:
            dtype = want[0].dtype
            tolerance = {torch.float32: 1e-5, torch.float16: 2 * FP16_HALF_STEP}.get(dtype, 2 * BF16_HALF_STEP)
            record["max_abs_diff"] = float((got[0].float() - want[0].float()).abs().max())
            record["identical"] = round((got[0] == want[0]).double().mean().item(), 6)
            torch.testing.assert_close(got[0].float(), want[0].float(), rtol=tolerance, atol=tolerance)
            if dtype in (torch.bfloat16, torch.float16):
                assert record["identical"] >= 0.99, f"only {record['identical']} identical"
        record["ok"] = True
    except Exception as exc:  # a failing case is a result
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"[:600]
    return record


def step_check(args, device) -> dict:
    from rerank_engine import kernels
    from tests.engine.kernel_cases import CASES, run_cases

    records = []
    with poisoned_outputs():
        results = run_cases(device)
    for name, result in results.items():
        case = CASES[name]
        want = getattr(kernels, case.kernel + "_torch")(**result["inputs"])
        records.append(_compare(case.kernel, result["outputs"], want if isinstance(want, tuple) else (want,),
                                f"case {name}"))
    for name, (kernel, options, make) in _fresh_cases(args.tiny).items():
        try:
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in make().items()}
            with poisoned_outputs():
                got = getattr(kernels, kernel)(**inputs, **options)
            want = getattr(kernels, kernel + "_torch")(**inputs)
            got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
            records.append(_compare(kernel, tuple(x.cpu() for x in got), tuple(x.cpu() for x in want),
                                    f"fresh {name}"))
        except Exception as exc:
            records.append({"case": f"fresh {name}", "kernel": kernel, "ok": False,
                            "error": f"{type(exc).__name__}: {exc}"[:600]})
        log(f"check {records[-1]['case']}: {'ok' if records[-1]['ok'] else records[-1]['error']}")
    result = {"cases": records, "passed": sum(r["ok"] for r in records), "failed": [r["case"] for r in records
                                                                                       if not r["ok"]]}
    if device.type == "cuda" and not args.no_pytest:
        selection = ["tests/engine/test_kernels.py", "tests/engine/test_fp8.py", "-k", "cuda or scaled_mm"]
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selection],
                             capture_output=True, text=True, timeout=240)
        result["pytest"] = {"returncode": run.returncode, "summary": (run.stdout.strip().splitlines() or [""])[-1]}
        log(f"pytest {' '.join(selection)}: {result['pytest']['summary']}")
    return result


# ---------------------------------------------------------------------------------------------
# engine variants (bge, compile, qwen)


def _workload(args):
    from bench.workload import generate
    from rerank_engine.pairs import Pair

    pool = generate(args.pool, args.docs, 0)
    singles = generate(8, 1, 1)
    return ([[Pair(r.query, d) for d in r.documents] for r in pool],
            [[Pair(r.query, d) for d in r.documents] for r in singles])


def _load(spec, folder: Path, params: dict, device):
    from rerank_engine.engine import EngineConfig, load_scorer

    config = EngineConfig.from_parameters({**spec.parameters, **params}, spec.max_batch_size, spec.name)
    return load_scorer(dataclasses.replace(config, weights_path=str(folder)), device)


def _way_b(scorer, spec, pool, concurrency: int, duration: float) -> dict:
    """Way (b) of bench.rerank_bench: the engine behind a batcher that does what the gateway's fan-out and
    Triton's dynamic batcher do (chunks of max_batch_size pairs, merged within max_queue_delay)."""
    from bench.inprocess import Batcher, engine_share, request_sender
    from bench.loadgen import run_threads
    from rerank_engine.pairs import Pair

    batcher = Batcher(lambda pairs: scorer.score([Pair(q, d) for q, d in pairs]).num_tokens.tolist(),
                      spec.max_batch_size, spec.max_queue_delay_us / 1e6)
    try:
        send = request_sender(batcher, [[(p.query, p.document) for p in pairs] for pairs in pool], spec.max_batch_size)
        for number in range(2):
            send(number)
        before = (len(batcher.batch_sizes), batcher.busy_s)
        level = run_threads(send, concurrency, duration)
        level.pop("timeline", None)
        level["engine"] = engine_share(batcher, before, level["elapsed_s"])
        return level
    finally:
        batcher.close()


def _profile(scorer, requests, device, ops_file: Path, label: str) -> dict:
    """Kernel time by kind and kernel launches per request (torch.profiler), against the calls' wall time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from bench.profile_engine import kernel_shares

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for pairs in requests:
            scorer.score(pairs)
        sync(device)
        wall = time.perf_counter() - started
    averages = prof.key_averages()
    kernels_ = [e for e in averages if e.device_type == DeviceType.CUDA]
    kernel_us = sum(e.self_device_time_total for e in kernels_)
    result = {"wall_ms_per_request": round(1000 * wall / len(requests), 2),
              "kernel_ms_per_request": round(kernel_us / 1000 / len(requests), 3),
              "kernels_per_request": round(sum(e.count for e in kernels_) / len(requests), 1),
              "gpu_busy": round(kernel_us / 1e6 / wall, 3) if wall else None}
    if kernel_us:
        result["kernel_shares"] = kernel_shares(averages, kernel_us)
        silu = sum(e.self_device_time_total for e in kernels_ if "silu_mul" in e.key)
        result["silu_mul_ms_per_request"] = round(silu / 1000 / len(requests), 3)
    sort_key = "self_device_time_total" if kernel_us else "self_cpu_time_total"
    with ops_file.open("a") as out:
        out.write(f"== {label}: {len(requests)} requests, {wall * 1000:.1f} ms wall ==\n")
        out.write(averages.table(sort_by=sort_key, row_limit=14) + "\n")
    return result


def _engine_loop(scorer, requests, device) -> dict:
    """The engine called one request at a time (no batcher), synced: pairs/s, and the tokenize/forward split."""
    from bench.profile_engine import timed_call

    sync(device)
    started = time.perf_counter()
    for pairs in requests:
        scorer.score(pairs)
    sync(device)
    elapsed = time.perf_counter() - started
    calls = [timed_call(scorer, pairs, device) for pairs in requests[:4]]
    return {"pairs_per_s": round(sum(len(p) for p in requests) / elapsed, 1),
            "ms_per_request": round(1000 * elapsed / len(requests), 2),
            "encode_ms": round(statistics.median(c[0] for c in calls), 2),
            "infer_ms_unpipelined": round(statistics.median(c[1] for c in calls), 2)}


def _memory(device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_allocated_mib": round(torch.cuda.max_memory_allocated(device) / 2**20),
            "peak_reserved_mib": round(torch.cuda.max_memory_reserved(device) / 2**20)}


def _fresh_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _tiny_params(args) -> dict:
    # On the CPU packed batches need `packed: true` (auto turns them on where the varlen kernel runs).
    return {"packed": "true"} if args.tiny else {}


def _bge_variants(args, device, variants, step: str) -> dict:
    from bench.models import resolve

    spec = resolve("bge")
    folder = spec.weights_dir(args.models_dir)
    pool, singles = _workload(args)
    probe = pool[:2] + singles
    _fresh_memory(device)
    reference = _load(spec, folder, {**_tiny_params(args), "dtype": "float32", "packed": "false",
                                     "cuda_graphs": "false"}, device)
    expected = [reference.score(p) for p in probe]
    lengths = [n for pairs in pool for n in reference.encode(pairs).num_tokens.tolist()]
    config = reference.model.config
    del reference
    per_micro_batch = min(spec.max_batch_size, int(spec.parameters.get("max_batch_tokens", 32768)) //
                          max(1, round(sum(lengths) / len(lengths))))
    floor = floors.xlm_roberta(config, lengths, per_micro_batch, 2 if device.type == "cuda" else 4)
    result = {"model": spec.name, "folder": str(folder), "docs": args.docs, "pool": args.pool,
              "concurrency": args.concurrency, "duration_s": args.duration, "floors": floor.as_dict(),
              "fp32_score_spread": float(np.ptp(np.concatenate([e.score for e in expected]))),
              "shipped_parameters": dict(spec.parameters), "variants": {}}
    ops = args.work / f"{step}_ops.txt"
    for name, params in variants:
        params = {**_tiny_params(args), **params}
        log(f"{step} {name}: {params}")
        entry: dict = {"parameters": params}
        try:
            _fresh_memory(device)
            started = time.perf_counter()
            scorer = _load(spec, folder, params, device)
            sync(device)
            entry["load_s"] = round(time.perf_counter() - started, 2)
            entry.update({f"after_load_{k}": v for k, v in _memory(device).items()})
            got = [scorer.score(p) for p in probe]
            entry["max_abs_score_diff_vs_fp32"] = float(max(np.abs(g.score - e.score).max()
                                                            for g, e in zip(got, expected)))
            entry["max_abs_raw_score_diff_vs_fp32"] = float(max(np.abs(g.raw_score - e.raw_score).max()
                                                                for g, e in zip(got, expected)))
            for pairs in pool[:4]:  # new shapes grow the allocator's pools: not part of the measurement
                scorer.score(pairs)
            entry["engine"] = _engine_loop(scorer, pool[: args.engine_requests], device)
            entry["b"] = _way_b(scorer, spec, pool, args.concurrency, args.duration)
            entry["profile"] = _profile(scorer, pool[:2], device, ops, f"{step} {name}")
            graphs = getattr(scorer, "packed_graphs", None)
            if graphs is not None:
                entry["packed_graphs"] = {"captured": len(graphs.graphs), "replays": graphs.replays,
                                          "eager": graphs.eager, "disabled": graphs.disabled}
            entry.update(_memory(device))
            entry["pairs_per_s_b"] = entry["b"]["pairs_per_s"]
            log(f"{step} {name}: (b) {entry['b']['pairs_per_s']} pairs/s, engine {entry['engine']['pairs_per_s']}, "
                f"kernels {entry['profile']['kernel_ms_per_request']} ms/request, "
                f"max |d score| {entry['max_abs_score_diff_vs_fp32']:.2e}, peak {entry.get('peak_allocated_mib')} MiB")
            del scorer
        except Exception as exc:  # one variant's failure must not lose the others
            entry["error"] = f"{type(exc).__name__}: {exc}"[:1500]
            entry["traceback"] = traceback.format_exc()[-3000:]
            log(f"{step} {name} failed: {entry['error']}")
        result["variants"][name] = entry
        write(args, step, result)
    return result


def step_bge(args, device) -> dict:
    return _bge_variants(args, device, BGE_VARIANTS, "bge")


def step_compile(args, device) -> dict:
    return _bge_variants(args, device, COMPILE_VARIANTS, "compile")


def step_qwen(args, device) -> dict:
    from bench.models import resolve
    from rerank_engine import kernels

    spec = resolve("qwen4b-fp8")
    folder = spec.weights_dir(args.models_dir)
    pool, _ = _workload(args)
    _fresh_memory(device)
    started = time.perf_counter()
    scorer = _load(spec, folder, _tiny_params(args), device)
    sync(device)
    result = {"model": spec.name, "folder": str(folder), "load_s": round(time.perf_counter() - started, 2),
              "methods": {}, **{f"after_load_{k}": v for k, v in _memory(device).items()}}
    encoded = scorer.encode(pool[0])
    head = encoded.head_lengths[0]
    config = scorer.model.config
    tokens_per_pair = sum(len(s) - head for s in encoded.sequences) / len(encoded.sequences)
    per_micro_batch = min(spec.max_batch_size, int(scorer.max_batch_tokens // max(1.0, tokens_per_pair)))
    result["floors"] = floors.qwen3(config, [head], [[len(s) - head for s in encoded.sequences]], per_micro_batch,
                                    fp8=True).as_dict()
    result["floors_bf16"] = floors.qwen3(config, [head], [[len(s) - head for s in encoded.sequences]],
                                         per_micro_batch, fp8=False).as_dict()
    shipped = kernels.SILU_MUL_QUANT_METHOD
    baseline_scores = None
    ops = args.work / "qwen_ops.txt"
    try:
        for pairs in pool[:3]:
            scorer.score(pairs)
        for method in QWEN_METHODS:
            entry: dict = {}
            try:
                # A benchmark instrument, as kernel_bench's Launch: the engine's kernel choice, switched in turn.
                kernels.SILU_MUL_QUANT_METHOD = method
                scores = scorer.score(pool[0]).score
                if baseline_scores is None:
                    baseline_scores = scores
                entry["max_abs_p_yes_diff_vs_two_pass_exact"] = float(np.abs(scores - baseline_scores).max())
                entry["engine"] = _engine_loop(scorer, pool[: max(2, args.engine_requests // 2)], device)
                entry["b"] = _way_b(scorer, spec, pool, args.concurrency, args.duration)
                entry["profile"] = _profile(scorer, pool[:1], device, ops, f"qwen {method}")
                entry["pairs_per_s_b"] = entry["b"]["pairs_per_s"]
                log(f"qwen {method}: (b) {entry['b']['pairs_per_s']} pairs/s, silu_mul "
                    f"{entry['profile'].get('silu_mul_ms_per_request')} ms/request, kernels "
                    f"{entry['profile']['kernel_ms_per_request']} ms/request")
            except Exception as exc:
                entry["error"] = f"{type(exc).__name__}: {exc}"[:1500]
                log(f"qwen {method} failed: {entry['error']}")
            result["methods"][method] = entry
            write(args, "qwen", result)
    finally:
        kernels.SILU_MUL_QUANT_METHOD = shipped
    result["shipped_method"] = shipped
    result.update(_memory(device))
    return result


# ---------------------------------------------------------------------------------------------
# table


def _load_json(work: Path, step: str):
    path = work / f"{step}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _share(rate: float | None, limit: float | None) -> str:
    return f"{rate / limit:.0%}" if rate and limit else "-"


def step_table(args, device) -> dict:
    work = args.work
    merged = {step: _load_json(work, step) for step in ("env", "dense", "check", "kernels", "bge", "qwen", "compile")}
    kernel_rows = merged.get("kernels") or []
    if isinstance(kernel_rows, dict):
        kernel_rows = kernel_rows.get("rows", [])
    dense = merged.get("dense") or {}
    fp16, fp8 = dense.get("fp16_tflop_per_s"), dense.get("fp8_square_tflop_per_s")
    lines = []
    env = merged.get("env") or {}
    lines.append(f"kernel_suite on {env.get('gpu', env.get('device'))} (torch {env.get('torch')}, triton "
                 f"{env.get('triton')}){' TINY CPU SMOKE RUN: figures mean nothing' if env.get('tiny') else ''}")
    lines.append(f"dense limit: fp16 {fp16} TFLOP/s, bf16 {dense.get('bf16_tflop_per_s')}, fp8 {fp8}; "
                 f"bge-shape products {[dense.get(f'bge_{k}_tflop_per_s') for k in ('qkv', 'o', 'up', 'down')]}; "
                 f"copy {dense.get('copy_gb_per_s')} GB/s")
    check = merged.get("check") or {}
    if check:
        lines.append(f"kernel checks on the device (poisoned outputs): {check.get('passed')} passed, failed "
                     f"{check.get('failed') or 'none'}; pytest: {(check.get('pytest') or {}).get('summary', '-')}")
    for step in ("bge", "compile"):
        data = merged.get(step)
        if not data:
            continue
        flops = data["floors"]["flops_per_pair"]
        ceiling = f"{fp16 * 1e12 / flops:,.0f}" if fp16 else "-"
        bytes_ceiling = (f"{dense['copy_gb_per_s'] * 1e9 / data['floors']['bytes_per_pair']:,.0f}"
                         if dense.get("copy_gb_per_s") else "-")
        lines.append(f"{step}: {data['floors']['gflop_per_pair']} GFLOP and {data['floors']['mb_per_pair']} MB per "
                     f"pair ({data['floors']['tokens_per_pair']} tokens); ceilings {ceiling} pairs/s (FLOPs at the "
                     f"fp16 limit), {bytes_ceiling} pairs/s (bytes at copy bandwidth). Targets: (b) >= 10,000")
        lines.append(f"  {'variant':<20} {'(b) c=' + str(data['concurrency']):>10} {'engine':>8} {'dense':>6} "
                     f"{'kern ms':>8} {'launch':>7} {'busy':>5} {'max|dS|':>9} {'peak MiB a/r':>12} {'load s':>6}")
        for name, entry in data["variants"].items():
            if "error" in entry:
                lines.append(f"  {name:<20} FAILED: {entry['error'][:90]}")
                continue
            b, prof = entry["b"]["pairs_per_s"], entry["profile"]
            entry["b_tflop_per_s"] = round(b * flops / 1e12, 1)
            entry["b_share_of_fp16_dense"] = round(b * flops / 1e12 / fp16, 3) if fp16 else None
            lines.append(f"  {name:<20} {b:>10,.0f} {entry['engine']['pairs_per_s']:>8,.0f} "
                         f"{_share(b * flops / 1e12, fp16):>6} {prof['kernel_ms_per_request']:>8} "
                         f"{prof['kernels_per_request']:>7} {prof.get('gpu_busy') or 0:>5.2f} "
                         f"{entry['max_abs_score_diff_vs_fp32']:>9.2e} "
                         f"{str(entry.get('peak_allocated_mib', '-')) + '/' + str(entry.get('peak_reserved_mib', '-')):>12} "
                         f"{entry['load_s']:>6}")
        done = {n: e for n, e in data["variants"].items() if "error" not in e}
        if done:
            best = max(done, key=lambda n: done[n]["b"]["pairs_per_s"])
            reference = done.get("reference", {}).get("b", {}).get("pairs_per_s")
            lines.append(f"  best (b): {best} {done[best]['b']['pairs_per_s']:,.0f} pairs/s"
                         + (f" (x{done[best]['b']['pairs_per_s'] / reference:.2f} the reference)" if reference else "")
                         + "; (c) needs the stack: bench.rerank_bench --ways c with the chosen parameters")
    qwen = merged.get("qwen")
    if qwen:
        flops = qwen["floors"]["flops_per_pair"]
        lines.append(f"qwen3-4b fp8: {qwen['floors']['gflop_per_pair']} GFLOP, {qwen['floors']['mb_per_pair']} MB per "
                     f"pair; shipped silu_mul_quant method {qwen.get('shipped_method')}")
        lines.append(f"  {'method':<16} {'(b)':>8} {'engine':>8} {'fp8 dense':>9} {'silu ms':>8} {'kern ms':>8} "
                     f"{'max|dP|':>9}")
        for method, entry in qwen["methods"].items():
            if "error" in entry:
                lines.append(f"  {method:<16} FAILED: {entry['error'][:90]}")
                continue
            b = entry["b"]["pairs_per_s"]
            entry["b_share_of_fp8_dense"] = round(b * flops / 1e12 / fp8, 3) if fp8 else None
            lines.append(f"  {method:<16} {b:>8,.1f} {entry['engine']['pairs_per_s']:>8,.1f} "
                         f"{_share(b * flops / 1e12, fp8):>9} {entry['profile'].get('silu_mul_ms_per_request', '-'):>8} "
                         f"{entry['profile']['kernel_ms_per_request']:>8} "
                         f"{entry['max_abs_p_yes_diff_vs_two_pass_exact']:>9.2e}")
    interesting = [r for r in kernel_rows if "silu_mul_quant" in r.get("kernel", "") or r.get("model") ==
                   "bge-reranker-base"]
    if interesting:
        lines.append("kernels (us; share of copy bandwidth at the bytes floor):")
        for row in interesting:
            if "shipped_us" in row:
                lines.append(f"  {row['model'][:18]:<18} {row['kernel'][:44]:<44} {row['shipped_us']:>9} "
                             f"{row.get('share_of_copy_bandwidth', '-'):>6}  ref {row.get('pytorch_reference_us') or row.get('pytorch_add_then_layer_norm_us') or row.get('pytorch_gathers_adds_layer_norm_us') or '-'}")
            else:
                lines.append(f"  {row['model'][:18]:<18} {row['kernel'][:44]:<44} mm {row['mm_us']} linear+gelu "
                             f"{row['linear_then_gelu_us']} epilogue {row['addmm_gelu_epilogue_us']}")
    table = "\n".join(lines)
    merged["table"] = table
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_suite.json").write_text(json.dumps(merged, indent=1, default=str) + "\n")
    (args.out / "table.txt").write_text(table + "\n")
    ops = [work / f"{s}_ops.txt" for s in ("bge", "compile", "qwen") if (work / f"{s}_ops.txt").is_file()]
    (args.out / "ops.txt").write_text("".join(p.read_text() for p in ops))
    print(table, flush=True)
    return {}


def step_models(args, device) -> dict:
    """--tiny only: the tests' tiny models under the real folder names (GPU runs use bench.random_models)."""
    from tests import tiny_models

    tiny_models.build_models_dir(args.models_dir)
    return {"models_dir": str(args.models_dir)}


STEPS = {"env": step_env, "dense": step_dense, "check": step_check, "bge": step_bge, "qwen": step_qwen,
         "compile": step_compile, "table": step_table, "models": step_models}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/models"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/kernel_suite"), help="each step's JSON")
    parser.add_argument("--out", type=Path, default=Path("bench_results/kernel_suite"), help="table: merged results")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run on the tests' tiny models")
    parser.add_argument("--pool", type=int, default=16, help="distinct 1 x N requests, sent round robin")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds of way (b) per variant")
    parser.add_argument("--engine-requests", type=int, default=4)
    parser.add_argument("--no-pytest", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    data = STEPS[args.step](args, device)
    if args.step != "table":
        write(args, args.step, data)


if __name__ == "__main__":
    main()
