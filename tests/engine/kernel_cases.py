"""The inputs on which tests/engine/test_kernels.py checks each Triton kernel
of rerank_engine.kernels against its PyTorch fallback, and the runner that
executes the kernels on them.

Run as a script, it executes every case under Triton's CPU interpreter and
saves inputs and outputs with torch.save:

    TRITON_INTERPRET=1 python -m tests.engine.kernel_cases OUT.pt

The variable must be set before Triton builds the kernels, which is why the
tests run it in a subprocess. On a CUDA machine the tests also call
`run_cases` in-process, on the GPU.

Each method of `silu_mul_quant` (kernels.SILU_MUL_QUANT_METHODS) has cases of its own. The shapes
cover rows that fit one block and rows that loop over blocks
(Qwen3-4B's hidden 2,560 and intermediate 9,728, 8B's 4,096 and 12,288, and
small rows with a forced small block), strided rows, bf16 and float32 inputs,
an all-zero row, rows that reach E4M3's saturation, and a row laid out so its
scale is exactly 1 and the kernel's FP8 conversion meets every E4M3 value,
every tie between neighbours and values just beside them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

FP8 = torch.float8_e4m3fn


@dataclass(frozen=True)
class Case:
    kernel: str  # a function of rerank_engine.kernels; its fallback is the same name + "_torch"
    make: Callable[[torch.Generator], dict]
    options: dict = field(default_factory=dict)  # keyword arguments for the kernel only (a forced block size)


def _randn(generator, *shape, dtype=torch.bfloat16, scale=1.0):
    return (torch.randn(*shape, generator=generator) * scale).to(dtype)


def _norm_inputs(tokens, hidden, dtype=torch.bfloat16, residual=True, stride=None):
    def make(g):
        width = stride or hidden
        x = _randn(g, tokens, width, dtype=dtype, scale=3.0)[:, :hidden]
        inputs = {"x": x, "weight": (torch.rand(hidden, generator=g) + 0.5).to(dtype), "eps": 1e-6}
        if residual:
            inputs["residual"] = _randn(g, tokens, width, dtype=dtype, scale=10.0)[:, :hidden]
        return inputs

    return make


def _gate_up(tokens, intermediate, dtype=torch.bfloat16, stride=None):
    def make(g):
        width = stride or 2 * intermediate
        gate_up = _randn(g, tokens, width, dtype=dtype, scale=4.0)[:, : 2 * intermediate]
        return {"gate_up": gate_up}

    return make


def _special_rows(g):
    """Row 0: an all-zero token. Row 1: values spread over 12 binades. Row 2: scale exactly 1 (its largest
    magnitude is 448), holding every finite E4M3 value, each tie between neighbours, and values a hair
    beside the ties, so the FP8 conversion decides every rounding case."""
    grid = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8).float()
    grid = grid[~grid.isnan()].unique()
    ties = (grid[1:] + grid[:-1]) / 2
    special = torch.cat([torch.tensor([448.0]), grid, ties, ties * (1 + 2.0**-20), ties * (1 - 2.0**-20)])
    columns = special.numel()
    spread = torch.randn(columns, generator=g) * torch.logspace(-6, 6, columns)
    return {"x": torch.stack([torch.zeros(columns), spread, special])}


def _qk(tokens, q_heads, kv_heads, head_dim, dtype=torch.bfloat16, extra_columns=0):
    def make(g):
        heads = q_heads + kv_heads
        # As PackedQwen3 makes it: the q|k product viewed as [tokens, heads, head_dim]; extra columns
        # make the token stride longer than heads * head_dim (q|k|v in one product).
        flat = _randn(g, tokens, heads * head_dim + extra_columns, dtype=dtype, scale=2.0)
        qk = flat[:, : heads * head_dim].view(tokens, heads, head_dim)
        inverse = 1.0 / (1_000_000.0 ** (torch.arange(0, head_dim, 2).double() / head_dim))
        angles = torch.arange(tokens).double()[:, None] * inverse[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        return {
            "qk": qk,
            "norm_weight": (torch.rand(heads, head_dim, generator=g) + 0.5).to(dtype),
            "cos": angles.cos().to(dtype).unsqueeze(1),  # [tokens, 1, head_dim], as PackedQwen3 holds them
            "sin": angles.sin().to(dtype).unsqueeze(1),
            "eps": 1e-6,
        }

    return make


def _add_norm(tokens, hidden, dtype=torch.float16, bias=True, stride=None):
    def make(g):
        width = stride or hidden
        inputs = {
            "y": _randn(g, tokens, width, dtype=dtype, scale=2.0)[:, :hidden],
            "residual": _randn(g, tokens, width, dtype=dtype, scale=3.0)[:, :hidden],
            "weight": (torch.rand(hidden, generator=g) + 0.5).to(dtype),
            "shift": _randn(g, hidden, dtype=dtype, scale=0.1),
            "eps": 1e-5,
        }
        if bias:
            inputs["bias"] = _randn(g, hidden, dtype=dtype, scale=0.5)
        return inputs

    return make


def _embedding(tokens, hidden, vocab=50, positions=40, dtype=torch.float16):
    def make(g):
        return {
            "ids": torch.randint(0, vocab, (tokens,), generator=g),
            "positions": torch.randint(2, positions, (tokens,), generator=g),
            "word": _randn(g, vocab, hidden, dtype=dtype),
            "position": _randn(g, positions, hidden, dtype=dtype, scale=0.5),
            "token_type": _randn(g, hidden, dtype=dtype, scale=0.2),
            "weight": (torch.rand(hidden, generator=g) + 0.5).to(dtype),
            "shift": _randn(g, hidden, dtype=dtype, scale=0.1),
            "eps": 1e-5,
        }

    return make


CASES: dict[str, Case] = {
    "rms_norm_quant/bf16-32-residual": Case("rms_norm_quant", _norm_inputs(7, 32)),
    "rms_norm_quant/fp32-100": Case("rms_norm_quant", _norm_inputs(5, 100, torch.float32, residual=False)),
    "rms_norm_quant/bf16-2560-residual": Case("rms_norm_quant", _norm_inputs(3, 2560)),
    "rms_norm_quant/bf16-4096-residual-strided": Case("rms_norm_quant", _norm_inputs(3, 4096, stride=4200)),
    "rms_norm_quant/bf16-12288-looped": Case("rms_norm_quant", _norm_inputs(2, 12288)),
    "rms_norm_quant/fp32-300-block64-residual": Case("rms_norm_quant", _norm_inputs(4, 300, torch.float32),
                                                     {"block": 64}),
    "silu_mul_quant/bf16-100": Case("silu_mul_quant", _gate_up(5, 100)),  # the shipped method
    "silu_mul_quant/one_pass/bf16-9728": Case("silu_mul_quant", _gate_up(2, 9728), {"method": "one_pass"}),
    "silu_mul_quant/one_pass/bf16-12288": Case("silu_mul_quant", _gate_up(2, 12288), {"method": "one_pass"}),
    "silu_mul_quant/one_pass/bf16-4096-no-tail": Case("silu_mul_quant", _gate_up(3, 4096), {"method": "one_pass"}),
    "silu_mul_quant/one_pass/fp32-300-strided": Case("silu_mul_quant", _gate_up(4, 300, torch.float32, stride=700),
                                                     {"method": "one_pass"}),
    "silu_mul_quant/one_pass/fp32-300-block64-falls-back": Case(
        "silu_mul_quant", _gate_up(3, 300, torch.float32), {"method": "one_pass", "block": 64}),
    "silu_mul_quant/split/bf16-9728": Case("silu_mul_quant", _gate_up(2, 9728), {"method": "split"}),
    "silu_mul_quant/split/fp32-300-block64-strided": Case(
        "silu_mul_quant", _gate_up(4, 300, torch.float32, stride=700), {"method": "split", "block": 64}),
    "silu_mul_quant/two_pass/bf16-9728-looped": Case("silu_mul_quant", _gate_up(2, 9728), {"method": "two_pass"}),
    "silu_mul_quant/two_pass/fp32-300-block64-strided": Case(
        "silu_mul_quant", _gate_up(4, 300, torch.float32, stride=700), {"method": "two_pass", "block": 64}),
    "silu_mul_quant/two_pass_exact/bf16-9728-looped": Case("silu_mul_quant", _gate_up(2, 9728),
                                                           {"method": "two_pass_exact"}),
    "silu_mul_quant/two_pass_exact/fp32-300-block64-strided": Case(
        "silu_mul_quant", _gate_up(4, 300, torch.float32, stride=700), {"method": "two_pass_exact", "block": 64}),
    "silu_mul/bf16-100": Case("silu_mul", _gate_up(5, 100)),
    "silu_mul/bf16-12288": Case("silu_mul", _gate_up(2, 12288)),
    "silu_mul/fp32-300-block64": Case("silu_mul", _gate_up(3, 300, torch.float32), {"block": 64}),
    "per_token_quant/bf16-2560": Case("per_token_quant", lambda g: {"x": _randn(g, 5, 2560, scale=5.0)}),
    "per_token_quant/fp32-special-rows": Case("per_token_quant", _special_rows),
    "per_token_quant/fp32-special-rows-block64": Case("per_token_quant", _special_rows, {"block": 64}),
    "per_token_quant/bf16-12288-looped": Case("per_token_quant", lambda g: {"x": _randn(g, 2, 12288)}),
    "qk_norm_rope/bf16-tiny": Case("qk_norm_rope", _qk(7, 4, 2, 8)),
    "qk_norm_rope/bf16-qwen3-4b-strided": Case("qk_norm_rope", _qk(5, 32, 8, 128, extra_columns=8 * 128)),
    "qk_norm_rope/fp32-head24": Case("qk_norm_rope", _qk(3, 3, 2, 24, torch.float32)),
    "add_layer_norm/fp16-768-bias": Case("add_layer_norm", _add_norm(9, 768)),  # bge: 512 + 256, 4 rows a program
    "add_layer_norm/fp16-768-strided-1-row": Case("add_layer_norm", _add_norm(3, 768, stride=800), {"rows_per_program": 1}),
    "add_layer_norm/fp32-100-no-bias": Case("add_layer_norm", _add_norm(5, 100, torch.float32, bias=False)),
    "add_layer_norm/bf16-1024-no-tail": Case("add_layer_norm", _add_norm(6, 1024, torch.bfloat16)),
    "embed_layer_norm/fp16-768": Case("embed_layer_norm", _embedding(11, 768)),
    "embed_layer_norm/fp32-96-2-rows": Case("embed_layer_norm", _embedding(7, 96, dtype=torch.float32),
                                            {"rows_per_program": 2}),
}


def case_inputs(name: str) -> dict:
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    return CASES[name].make(generator)


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def run_cases(device: torch.device) -> dict[str, dict]:
    """Every case's inputs (on the CPU) and its kernel's outputs (moved to the CPU)."""
    from rerank_engine import kernels

    if not kernels.available(device):
        raise RuntimeError(f"the Triton kernels do not run on {device} here")
    results = {}
    for name, case in CASES.items():
        inputs = case_inputs(name)
        on_device = {}
        for key, value in inputs.items():
            # Keep a strided view strided on the device too: copy its base, then take the same view.
            if isinstance(value, torch.Tensor) and not value.is_contiguous() and value._base is not None:
                base = value._base.to(device)
                on_device[key] = base.as_strided(value.shape, value.stride(), value.storage_offset())
            else:
                on_device[key] = _to(value, device)
        outputs = getattr(kernels, case.kernel)(**on_device, **case.options)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        results[name] = {"inputs": inputs, "outputs": tuple(o.cpu() for o in outputs)}
    return results


def main() -> None:
    from rerank_engine import kernels

    if not kernels.interpreting():
        raise SystemExit("set TRITON_INTERPRET=1 before running the kernels on the CPU")
    torch.save(run_cases(torch.device("cpu")), sys.argv[1])


if __name__ == "__main__":
    main()
