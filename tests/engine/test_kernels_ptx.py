"""Every Triton kernel of rerank_engine.triton_kernels compiled for a Hopper GPU (sm_90) to PTX, on a machine
without one: the interpreter that checks their arithmetic (test_kernels.py) accepts code the GPU compiler
refuses (types, constexpr scoping), and a device call lost to that is expensive. Also: the quantizing
kernels divide per row, not per value (the IEEE division per value made them instruction-bound)."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

FP8, BF16, FP16 = "*fp8e4nv", "*bf16", "*fp16"
_SILU = {"gate_up_ptr": BF16, "out_ptr": FP8, "scale_ptr": "*fp32", "half": "i32", "in_stride": "i32",
         "out_stride": "i32"}
_NORM = {"n_rows": "i32", "n_cols": "i32", "n_float": "fp32"}
CASES = {
    # name: (kernel, signature, constexprs, warps, most IEEE divisions allowed in the PTX)
    "silu_mul_quant one_pass 9728": ("silu_mul_quant_row_kernel", _SILU, {"HEAD": 8192, "TAIL": 2048}, 16, 2),
    "silu_mul_quant one_pass 4096": ("silu_mul_quant_row_kernel", _SILU, {"HEAD": 4096, "TAIL": 0}, 8, 2),
    "silu_mul_quant two_pass": ("silu_mul_kernel", _SILU, {"QUANTIZE": True, "BLOCK": 4096, "SINGLE_PASS": False,
                                                           "FAST": True}, 8, 2),
    "silu_mul_quant two_pass_exact": ("silu_mul_kernel", _SILU, {"QUANTIZE": True, "BLOCK": 4096,
                                                                 "SINGLE_PASS": False, "FAST": False}, 8, None),
    "silu_mul bf16": ("silu_mul_kernel", {**_SILU, "out_ptr": BF16, "scale_ptr": BF16},
                      {"QUANTIZE": False, "BLOCK": 4096, "SINGLE_PASS": False, "FAST": True}, 8, 0),
    "silu_mul_quant split peaks": ("silu_mul_peak_kernel", {"gate_up_ptr": BF16, "peak_ptr": "*fp32", "half": "i32",
                                                           "in_stride": "i32", "tiles": "i32"}, {"TILE": 2048}, 8, 0),
    "silu_mul_quant split tiles": ("silu_mul_quant_tile_kernel", {
        "gate_up_ptr": BF16, "peak_ptr": "*fp32", "out_ptr": FP8, "scale_ptr": "*fp32", "half": "i32",
        "in_stride": "i32", "out_stride": "i32", "tiles": "i32"}, {"TILE": 2048, "TILES": 8}, 8, 2),
    "rms_norm_quant": ("rms_norm_quant_kernel", {
        "x_ptr": BF16, "residual_ptr": BF16, "residual_out_ptr": BF16, "weight_ptr": BF16, "out_ptr": FP8,
        "scale_ptr": "*fp32", "n_cols": "i32", "n_float": "fp32", "x_stride": "i32", "residual_stride": "i32",
        "residual_out_stride": "i32", "out_stride": "i32", "eps": "fp32"},
        {"HAS_RESIDUAL": True, "BLOCK": 4096, "SINGLE_PASS": True}, 8, 4),
    "per_token_quant looped": ("per_token_quant_kernel", {
        "x_ptr": BF16, "out_ptr": FP8, "scale_ptr": "*fp32", "n_cols": "i32", "x_stride": "i32", "out_stride": "i32"},
        {"BLOCK": 4096, "SINGLE_PASS": False}, 8, None),
    "add_layer_norm 768": ("add_layer_norm_kernel", {
        "y_ptr": FP16, "bias_ptr": FP16, "residual_ptr": FP16, "weight_ptr": FP16, "shift_ptr": FP16, "out_ptr": FP16,
        **_NORM, "y_stride": "i32", "residual_stride": "i32", "out_stride": "i32", "eps": "fp32"},
        {"HAS_BIAS": True, "ROWS": 4, "HEAD": 512, "TAIL": 256}, 4, None),
    "embed_layer_norm 768": ("embed_layer_norm_kernel", {
        "ids_ptr": "*i64", "positions_ptr": "*i64", "word_ptr": FP16, "position_ptr": FP16, "type_ptr": FP16,
        "weight_ptr": FP16, "shift_ptr": FP16, "out_ptr": FP16, **_NORM, "table_stride": "i32", "out_stride": "i32",
        "eps": "fp32"}, {"ROWS": 4, "HEAD": 512, "TAIL": 256}, 4, None),
    "qk_norm_rope": ("qk_norm_rope_kernel", {
        "qk_ptr": BF16, "weight_ptr": BF16, "cos_ptr": BF16, "sin_ptr": BF16, "out_ptr": BF16, "heads": "i32",
        "head_dim": "i32", "dim_float": "fp32", "qk_token_stride": "i32", "qk_head_stride": "i32", "cos_stride": "i32",
        "sin_stride": "i32", "out_token_stride": "i32", "out_head_stride": "i32", "eps": "fp32"},
        {"BLOCK_H": 16, "BLOCK_D": 128}, 4, None),
}


def _ptx(kernel, signature: dict, constexprs: dict, warps: int) -> str:
    try:
        from triton._C.libtriton import ir
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.compiler import ASTSource
    except ImportError as exc:
        pytest.skip(f"this Triton has no CUDA backend to compile with: {exc}")
    constexprs = {**constexprs, "EMULATE_CASTS": False} if "EMULATE_CASTS" in kernel.arg_names else constexprs
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    options = backend.parse_options({"num_warps": warps})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    module = source.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                            context)
    stages: dict = {}
    backend.add_stages(stages, options, source.language)
    metadata: dict = {}
    for stage in ("ttir", "ttgir", "llir", "ptx"):  # the cubin stage needs ptxas, which a CPU install lacks
        module = stages[stage](module, metadata)
    return module


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_compiles_for_hopper(name):
    from rerank_engine import triton_kernels

    kernel, signature, constexprs, warps, most_divisions = CASES[name]
    ptx = _ptx(getattr(triton_kernels, kernel), signature, constexprs, warps)
    assert ".target sm_90" in ptx
    if most_divisions is not None:
        assert ptx.count("div.rn.f32") <= most_divisions, f"{ptx.count('div.rn.f32')} IEEE divisions"


def test_every_kernel_is_compiled_here():
    from triton.runtime.jit import JITFunction

    from rerank_engine import triton_kernels

    kernels = {name for name, value in vars(triton_kernels).items()
               if isinstance(value, JITFunction) and name.endswith("_kernel")}
    assert kernels == {case[0] for case in CASES.values()}
