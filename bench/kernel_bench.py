"""Times the fused kernels of `rerank_engine.kernels` on a GPU at Qwen3's real
shapes: each as shipped, against its unfused PyTorch reference and, with
`--variants`, under other launch choices (one block holding the whole row or
a loop over column blocks, and the warp count), to choose the shipped ones.

Each figure is the median of `--rounds` timed launches (CUDA events) after a
warm-up, on one micro-batch of `--tokens` tokens (the issue-6 workload packs
~8,500 tokens per micro-batch). Prints one JSON line per measurement and
writes them to `<out>/kernels.json`.

  python -m bench.kernel_bench --variants --out /tmp/kernels
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable

import torch

from rerank_engine import kernels

SHAPES = {  # hidden, intermediate, q heads + kv heads, head_dim: the real models' configs
    "Qwen3-Reranker-4B": (2560, 9728, 32 + 8, 128),
    "Qwen3-Reranker-8B": (4096, 12288, 32 + 8, 128),
}
ATTENTION_OUT = 32 * 128  # attention's output row (32 heads of 128) that per_token_quant reads


def timed_us(call: Callable[[], object], rounds: int) -> float:
    for _ in range(3):
        call()
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000)
    return round(statistics.median(samples), 1)


class Launch:
    """Kernel launch choices, set on `rerank_engine.kernels` for the duration of a `with` block."""

    def __init__(self, max_single_block: int, warps: int | None) -> None:
        self.max_single_block, self.warps = max_single_block, warps

    def __enter__(self) -> "Launch":
        self.saved = kernels.MAX_SINGLE_BLOCK, kernels._warps
        kernels.MAX_SINGLE_BLOCK = self.max_single_block
        if self.warps is not None:
            kernels._warps = lambda block: self.warps
        return self

    def __exit__(self, *exc: object) -> None:
        kernels.MAX_SINGLE_BLOCK, kernels._warps = self.saved

    def label(self) -> str:
        return f"single block up to {self.max_single_block}, warps {self.warps or 'shipped'}"


def measure(model: str, tokens: int, rounds: int, variants: bool, device: torch.device) -> list[dict]:
    hidden, intermediate, qk_heads, head_dim = SHAPES[model]
    bf16 = dict(dtype=torch.bfloat16, device=device)
    gate_up = torch.randn(tokens, 2 * intermediate, **bf16)
    x, residual = torch.randn(tokens, hidden, **bf16), torch.randn(tokens, hidden, **bf16)
    weight = torch.rand(hidden, **bf16) + 0.5
    attention_out = torch.randn(tokens, ATTENTION_OUT, **bf16)
    qk = torch.randn(tokens, qk_heads, head_dim, **bf16)
    qk_weight = torch.rand(qk_heads, head_dim, **bf16) + 0.5
    cos, sin = torch.randn(tokens, head_dim, **bf16), torch.randn(tokens, head_dim, **bf16)
    cases = {
        "silu_mul_quant": (lambda: kernels.silu_mul_quant(gate_up), lambda: kernels.silu_mul_quant_torch(gate_up)),
        "silu_mul (bf16 path)": (lambda: kernels.silu_mul(gate_up), lambda: kernels.silu_mul_torch(gate_up)),
        "rms_norm_quant with residual": (lambda: kernels.rms_norm_quant(x, weight, 1e-6, residual),
                                         lambda: kernels.rms_norm_quant_torch(x, weight, 1e-6, residual)),
        "add + rms_norm (bf16 path, PyTorch)": (
            lambda: torch.nn.functional.rms_norm(x + residual, (hidden,), weight, 1e-6), None),
        "per_token_quant": (lambda: kernels.per_token_quant(attention_out),
                            lambda: kernels.per_token_quant_torch(attention_out)),
        "qk_norm_rope": (lambda: kernels.qk_norm_rope(qk, qk_weight, cos, sin, 1e-6),
                         lambda: kernels.qk_norm_rope_torch(qk, qk_weight, cos, sin, 1e-6)),
    }
    rows = []
    for name, (fused, reference) in cases.items():
        row = {"model": model, "kernel": name, "tokens": tokens, "shipped_us": timed_us(fused, rounds)}
        if reference is not None:
            row["pytorch_reference_us"] = timed_us(reference, rounds)
        if variants and "quant" in name:
            row["variants_us"] = {}
            for launch in (Launch(8192, None), Launch(16384, 8), Launch(16384, 16), Launch(16384, 32),
                           Launch(8192, 4), Launch(8192, 16)):
                with launch:
                    row["variants_us"][launch.label()] = timed_us(fused, rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--variants", action="store_true", help="also time other launch choices of the quantizers")
    parser.add_argument("--out", type=Path, default=Path("bench_results/kernels"))
    args = parser.parse_args(argv)
    device = torch.device("cuda", 0)
    if not kernels.available(device):
        raise SystemExit("the fused FP8 kernels need a CUDA GPU of compute capability 8.9 or more, with Triton")
    rows = [row for model in args.models for row in measure(model, args.tokens, args.rounds, args.variants, device)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
