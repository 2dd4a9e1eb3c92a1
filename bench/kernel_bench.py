"""Times the fused kernels of `rerank_engine.kernels` at the real models' shapes:
each as shipped, against its unfused PyTorch reference, with `--variants`
under other launch choices (block sizes, warps, rows per program), and with
`--methods` every method of `silu_mul_quant` (kernels.SILU_MUL_QUANT_METHODS), with `--tuning` the
warps of `one_pass` and the rows per program of the norm kernels.
Each row carries the bytes its work must move at least (`bench.floors`) and
the rate that makes, against the card's copy bandwidth measured in the same
run (`copy_gb_per_s`): how near the memory limit each kernel runs.

Qwen3 shapes at `--tokens` (the issue-6 workload packs ~8,500 tokens per Qwen3
micro-batch, ~18,000 per bge one: `--bge-tokens`). Each figure is the median of
`--rounds` timed launches (CUDA events) after a warm-up. Prints one JSON line per
measurement and writes them to `<out>/kernels.json`. `--device cpu` times on the
CPU (the kernels under TRITON_INTERPRET=1, else their fallbacks): a smoke run.

  python -m bench.kernel_bench --methods --tuning --bge --out /tmp/kernels
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from bench import floors
from rerank_engine import kernels

SHAPES = {  # hidden, intermediate, q heads + kv heads, head_dim: the real models' configs
    "Qwen3-Reranker-4B": (2560, 9728, 32 + 8, 128),
    "Qwen3-Reranker-8B": (4096, 12288, 32 + 8, 128),
}
BGE = (768, 3072, 250002, 514)  # hidden, intermediate, vocabulary, positions
ATTENTION_OUT = 32 * 128  # attention's output row (32 heads of 128) that per_token_quant reads


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_us(call: Callable[[], object], rounds: int, device: torch.device | None = None) -> float:
    for _ in range(3):
        call()
    samples = []
    if device is not None and device.type == "cpu":
        for _ in range(rounds):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1e6)
        return round(statistics.median(samples), 1)
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000)
    return round(statistics.median(samples), 1)


def copy_gb_per_s(device: torch.device, megabytes: int = 1024, rounds: int = 20) -> float:
    """The card's device-to-device copy rate (read + write bytes per second): the bytes floors' yardstick."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    us = timed_us(lambda: target.copy_(source), rounds, device)
    return round(2 * source.numel() / us / 1e3, 1)


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


def _row(model: str, name: str, tokens: int, us: float, floor_bytes: int | None, bandwidth: float | None,
         **extra) -> dict:
    row = {"model": model, "kernel": name, "tokens": tokens, "shipped_us": us, **extra}
    if floor_bytes:
        row["floor_bytes"] = floor_bytes
        row["gb_per_s"] = round(floor_bytes / us / 1e3, 1)
        if bandwidth:
            row["share_of_copy_bandwidth"] = round(floor_bytes / us / 1e3 / bandwidth, 3)
    print(json.dumps(row), flush=True)
    return row


def measure(model: str, tokens: int, rounds: int, variants: bool, methods: bool, device: torch.device,
            bandwidth: float | None, tuning: bool = False) -> list[dict]:
    hidden, intermediate, qk_heads, head_dim = SHAPES[model]
    bf16 = dict(dtype=torch.bfloat16, device=device)
    gate_up = torch.randn(tokens, 2 * intermediate, **bf16)
    x, residual = torch.randn(tokens, hidden, **bf16), torch.randn(tokens, hidden, **bf16)
    weight = torch.rand(hidden, **bf16) + 0.5
    attention_out = torch.randn(tokens, ATTENTION_OUT, **bf16)
    qk = torch.randn(tokens, qk_heads, head_dim, **bf16)
    qk_weight = torch.rand(qk_heads, head_dim, **bf16) + 0.5
    cos, sin = torch.randn(tokens, head_dim, **bf16), torch.randn(tokens, head_dim, **bf16)
    silu_bytes = floors.silu_mul_quant_bytes(tokens, intermediate)
    cases = {
        "silu_mul_quant": (lambda: kernels.silu_mul_quant(gate_up), lambda: kernels.silu_mul_quant_torch(gate_up),
                           silu_bytes),
        "silu_mul (bf16 path)": (lambda: kernels.silu_mul(gate_up), lambda: kernels.silu_mul_torch(gate_up),
                                 tokens * intermediate * 6),
        "rms_norm_quant with residual": (lambda: kernels.rms_norm_quant(x, weight, 1e-6, residual),
                                         lambda: kernels.rms_norm_quant_torch(x, weight, 1e-6, residual),
                                         tokens * hidden * 7),
        "add + rms_norm (bf16 path, PyTorch)": (
            lambda: F.rms_norm(x + residual, (hidden,), weight, 1e-6), None, tokens * hidden * 6),
        "per_token_quant": (lambda: kernels.per_token_quant(attention_out),
                            lambda: kernels.per_token_quant_torch(attention_out), tokens * ATTENTION_OUT * 3),
        "qk_norm_rope": (lambda: kernels.qk_norm_rope(qk, qk_weight, cos, sin, 1e-6),
                         lambda: kernels.qk_norm_rope_torch(qk, qk_weight, cos, sin, 1e-6),
                         tokens * qk_heads * head_dim * 4),
    }
    rows = []
    for name, (fused, reference, floor_bytes) in cases.items():
        extra = {}
        if name == "silu_mul_quant":
            extra["method"] = kernels.SILU_MUL_QUANT_METHOD
        if reference is not None:
            extra["pytorch_reference_us"] = timed_us(reference, max(3, rounds // 5), device)
        if variants and "quant" in name:
            extra["variants_us"] = {}
            for launch in (Launch(8192, None), Launch(16384, 8), Launch(16384, 16), Launch(16384, 32),
                           Launch(8192, 4), Launch(8192, 16)):
                with launch:
                    extra["variants_us"][launch.label()] = timed_us(fused, rounds, device)
        rows.append(_row(model, name, tokens, timed_us(fused, rounds, device), floor_bytes, bandwidth, **extra))
    if methods:
        for method in kernels.SILU_MUL_QUANT_METHODS:
            us = timed_us(lambda: kernels.silu_mul_quant(gate_up, method=method), rounds, device)
            extra = {"method": method}
            if method == "one_pass" and tuning:
                extra["warps_us"] = {}
                saved = kernels._warps
                try:
                    for warps in (4, 8, 16, 32):
                        kernels._warps = lambda block, w=warps: w
                        extra["warps_us"][str(warps)] = timed_us(
                            lambda: kernels.silu_mul_quant(gate_up, method=method), rounds, device)
                finally:
                    kernels._warps = saved
            rows.append(_row(model, f"silu_mul_quant {method}", tokens, us, silu_bytes, bandwidth, **extra))
    return rows


def measure_bge(tokens: int, rounds: int, tuning: bool, device: torch.device, bandwidth: float | None,
                shape: tuple[int, int, int, int] = BGE) -> list[dict]:
    """bge's fused kernels against what the reference packed path runs in their place."""
    hidden, intermediate, vocabulary, positions = shape
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    half = dict(dtype=dtype, device=device)
    y, x = torch.randn(tokens, hidden, **half), torch.randn(tokens, hidden, **half)
    bias, weight, shift = torch.randn(hidden, **half), torch.rand(hidden, **half) + 0.5, torch.randn(hidden, **half)
    word, position = torch.randn(vocabulary, hidden, **half), torch.randn(positions, hidden, **half)
    token_type = torch.randn(hidden, **half)
    ids = torch.randint(0, vocabulary, (tokens,), device=device)
    pos = torch.randint(2, positions, (tokens,), device=device)
    up_w, up_b = torch.randn(intermediate, hidden, **half) * 0.03, torch.randn(intermediate, **half)
    rows = []
    add_bytes = floors.add_layer_norm_bytes(tokens, hidden, y.element_size())
    reference_us = timed_us(lambda: F.layer_norm(y + x, (hidden,), weight, shift, 1e-5), rounds, device)
    extra = {"pytorch_add_then_layer_norm_us": reference_us}
    if tuning:
        extra["rows_per_program_us"] = {
            str(r): timed_us(lambda r=r: kernels.add_layer_norm(y, x, weight, shift, 1e-5, bias, rows_per_program=r),
                             rounds, device) for r in (1, 2, 4, 8, 16)}
    rows.append(_row("bge-reranker-base", "add_layer_norm (bias + residual + LayerNorm)", tokens,
                     timed_us(lambda: kernels.add_layer_norm(y, x, weight, shift, 1e-5, bias), rounds, device),
                     add_bytes, bandwidth, **extra))

    def torch_embeddings():
        return F.layer_norm(F.embedding(ids, word) + token_type + F.embedding(pos, position), (hidden,), weight,
                            shift, 1e-5)

    rows.append(_row("bge-reranker-base", "embed_layer_norm", tokens,
                     timed_us(lambda: kernels.embed_layer_norm(ids, pos, word, position, token_type, weight, shift,
                                                               1e-5), rounds, device),
                     floors.embed_layer_norm_bytes(tokens, hidden, y.element_size()), bandwidth,
                     pytorch_gathers_adds_layer_norm_us=timed_us(torch_embeddings, rounds, device)))
    flops = 2 * tokens * hidden * intermediate
    mm_us = timed_us(lambda: torch.mm(x, up_w.t()), rounds, device)
    linear_gelu_us = timed_us(lambda: F.gelu(F.linear(x, up_w, up_b)), rounds, device)
    epilogue_us = timed_us(lambda: torch._addmm_activation(up_b, x, up_w.t(), use_gelu=True), rounds, device)
    row = {"model": "bge-reranker-base", "kernel": "up-projection + GELU", "tokens": tokens,
           "mm_us": mm_us, "linear_then_gelu_us": linear_gelu_us, "addmm_gelu_epilogue_us": epilogue_us,
           "mm_tflop_per_s": round(flops / mm_us / 1e6, 1), "gelu_pass_floor_bytes":
           floors.gelu_bytes(tokens, intermediate, y.element_size())}
    print(json.dumps(row), flush=True)
    rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--bge-tokens", type=int, default=18432)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--variants", action="store_true",
                        help="also time other block and warp choices of the quantizers (2026-12-01's table)")
    parser.add_argument("--tuning", action="store_true",
                        help="also time one_pass at 4-32 warps and the norm kernels at 1-16 rows a program")
    parser.add_argument("--methods", action="store_true", help="also time every silu_mul_quant method")
    parser.add_argument("--bge", action="store_true", help="also time bge's fused kernels and GELU epilogue")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--out", type=Path, default=Path("bench_results/kernels"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not kernels.available(device):
        raise SystemExit("the fused FP8 kernels need a CUDA GPU of compute capability 8.9 or more, with Triton")
    bandwidth = copy_gb_per_s(device, 1024 if device.type == "cuda" else 64, 20 if device.type == "cuda" else 3)
    print(json.dumps({"copy_gb_per_s": bandwidth}), flush=True)
    rows = [{"copy_gb_per_s": bandwidth, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
             else "cpu", "kernels_run": "triton" if kernels.available(device, fp8=False) else "fallback"}]
    for model in args.models:
        rows.extend(measure(model, args.tokens, args.rounds, args.variants, args.methods, device, bandwidth,
                            args.tuning))
    if args.bge:
        shape = BGE if device.type == "cuda" else (768, 3072, 1000, 514)
        rows.extend(measure_bge(args.bge_tokens, args.rounds, args.tuning, device, bandwidth, shape))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
