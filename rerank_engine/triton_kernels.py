"""The Triton kernels behind `rerank_engine.kernels`. Importing this module imports
Triton, so only `rerank_engine.kernels` imports it, and only when the kernels can
run; call them through that module, which checks inputs and falls back to PyTorch.

One program per row (per token, or per token and group of heads for q/k): the
rows are short (2,560 to 12,288 values) and the work is memory-bound, so each
kernel reads its row once where one block holds it, and otherwise loops over
column blocks, reading the row again from cache for each later pass.

Arithmetic follows `rerank_engine.fp8_recipe` in float32: IEEE division and
square root (`div_rn`, `sqrt_rn`) where the PyTorch fallback divides, so the
two agree to the last bit wherever their reductions do.

`EMULATE_CASTS` is for Triton's CPU interpreter only (TRITON_INTERPRET=1):
its float32 -> float8e4nv conversion rounds ties away from zero, lets a
rounding carry out of the mantissa corrupt the exponent (-124.0 becomes
-64.0) and does not saturate (1000.0 becomes 256.0), and its float32 ->
bfloat16 conversion truncates (triton 3.6.0 and 3.9.0,
`triton/runtime/interpreter.py::_convert_float` and the bf16 truncation).
With the flag on, values are first rounded to nearest-even onto the target
grid in float32, so the conversion has nothing left to round; on a GPU the
flag is off and the hardware's `cvt.rn.satfinite` conversions do it.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rerank_engine.fp8_recipe import AMAX_FLOOR, FP8_MAX

_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)


@triton.jit
def _round_to_e4m3_grid(v):
    """`v` (float32, |v| <= 448) rounded to nearest-even onto E4M3's grid, in float32 arithmetic."""
    bits = v.to(tl.int32, bitcast=True)
    exponent = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2^-6 the grid is the subnormal step 2^-9
    step = ((exponent + 124) << 23).to(tl.float32, bitcast=True)  # 2^(exponent - 3): three mantissa bits
    # Adding and removing 1.5 * 2^23 rounds |v / step| < 16 to an integer, ties to even.
    rounded = ((v / step + 12582912.0) - 12582912.0) * step
    return tl.where(rounded == 0.0, v * 0.0, rounded)  # keep the sign of a zero, as the hardware does


@triton.jit
def _to_fp8(v, dtype: tl.constexpr, EMULATE_CASTS: tl.constexpr):
    if EMULATE_CASTS:
        v = _round_to_e4m3_grid(v)
    return v.to(dtype)


@triton.jit
def _narrow(v, dtype: tl.constexpr, EMULATE_CASTS: tl.constexpr):
    """float32 `v` stored as `dtype` (the activations' bfloat16, float16 or float32)."""
    if EMULATE_CASTS:
        if dtype == tl.bfloat16:
            bits = v.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # round to nearest even at bit 16
            v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _quantize(y, scale, dtype: tl.constexpr, EMULATE_CASTS: tl.constexpr):
    q = tl.clamp(tl.div_rn(y, scale), -_FP8_MAX, _FP8_MAX)
    return _to_fp8(q, dtype, EMULATE_CASTS)


@triton.jit
def _scale(amax):
    return tl.div_rn(tl.maximum(amax, _AMAX_FLOOR), _FP8_MAX)


@triton.jit
def _add_norm_block(x_ptr, residual_ptr, residual_out_ptr, cols, mask,
                    HAS_RESIDUAL: tl.constexpr, STORE_RESIDUAL: tl.constexpr, EMULATE_CASTS: tl.constexpr):
    """One block of the norm's input: x, or x + residual rounded to the residual stream's dtype."""
    x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        total = _narrow(x + tl.load(residual_ptr + cols, mask=mask, other=0.0).to(tl.float32),
                        residual_out_ptr.dtype.element_ty, EMULATE_CASTS)
        if STORE_RESIDUAL:
            tl.store(residual_out_ptr + cols, total, mask=mask)
        x = total.to(tl.float32)
    return x


@triton.jit
def rms_norm_quant_kernel(
    x_ptr, residual_ptr, residual_out_ptr, weight_ptr, out_ptr, scale_ptr,
    n_cols, n_float, x_stride, residual_stride, residual_out_stride, out_stride, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, SINGLE_PASS: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """[residual add,] RMSNorm and per-token E4M3 quantization of one row."""
    row = tl.program_id(0).to(tl.int64)
    x_ptr += row * x_stride
    residual_ptr += row * residual_stride
    residual_out_ptr += row * residual_out_stride
    out_ptr += row * out_stride
    out_dtype = out_ptr.dtype.element_ty
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = _add_norm_block(x_ptr, residual_ptr, residual_out_ptr, cols, mask, HAS_RESIDUAL, True, EMULATE_CASTS)
        rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(tl.sum(x * x, axis=0), n_float) + eps))
        y = x * rstd * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        scale = _scale(tl.max(tl.abs(y), axis=0))
        tl.store(out_ptr + cols, _quantize(y, scale, out_dtype, EMULATE_CASTS), mask=mask)
    else:
        squares = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = _add_norm_block(x_ptr, residual_ptr, residual_out_ptr, cols, mask, HAS_RESIDUAL, True, EMULATE_CASTS)
            squares += x * x
        rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(tl.sum(squares, axis=0), n_float) + eps))
        peaks = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = _add_norm_block(x_ptr, residual_ptr, residual_out_ptr, cols, mask, HAS_RESIDUAL, False, EMULATE_CASTS)
            y = x * rstd * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            peaks = tl.maximum(peaks, tl.abs(y))
        scale = _scale(tl.max(peaks, axis=0))
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = _add_norm_block(x_ptr, residual_ptr, residual_out_ptr, cols, mask, HAS_RESIDUAL, False, EMULATE_CASTS)
            y = x * rstd * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + cols, _quantize(y, scale, out_dtype, EMULATE_CASTS), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _silu_mul_block(row_ptr, cols, mask, half):
    gate = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row_ptr + half + cols, mask=mask, other=0.0).to(tl.float32)
    return tl.div_rn(gate, 1.0 + tl.exp(-gate)) * up


@triton.jit
def silu_mul_kernel(
    gate_up_ptr, out_ptr, scale_ptr, half, in_stride, out_stride,
    QUANTIZE: tl.constexpr, BLOCK: tl.constexpr, SINGLE_PASS: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """silu(gate) * up of one row of [gate | up], stored in bfloat16 or, with QUANTIZE, in E4M3 with its scale."""
    row = tl.program_id(0).to(tl.int64)
    gate_up_ptr += row * in_stride
    out_ptr += row * out_stride
    out_dtype = out_ptr.dtype.element_ty
    if not QUANTIZE:
        for start in range(0, half, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < half
            tl.store(out_ptr + cols, _narrow(_silu_mul_block(gate_up_ptr, cols, mask, half), out_dtype, EMULATE_CASTS),
                     mask=mask)
    elif SINGLE_PASS:
        cols = tl.arange(0, BLOCK)
        mask = cols < half
        y = _silu_mul_block(gate_up_ptr, cols, mask, half)
        scale = _scale(tl.max(tl.abs(y), axis=0))
        tl.store(out_ptr + cols, _quantize(y, scale, out_dtype, EMULATE_CASTS), mask=mask)
        tl.store(scale_ptr + row, scale)
    else:
        peaks = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, half, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            peaks = tl.maximum(peaks, tl.abs(_silu_mul_block(gate_up_ptr, cols, cols < half, half)))
        scale = _scale(tl.max(peaks, axis=0))
        for start in range(0, half, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < half
            y = _silu_mul_block(gate_up_ptr, cols, mask, half)
            tl.store(out_ptr + cols, _quantize(y, scale, out_dtype, EMULATE_CASTS), mask=mask)
        tl.store(scale_ptr + row, scale)


@triton.jit
def per_token_quant_kernel(
    x_ptr, out_ptr, scale_ptr, n_cols, x_stride, out_stride,
    BLOCK: tl.constexpr, SINGLE_PASS: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """Per-token E4M3 quantization of one row."""
    row = tl.program_id(0).to(tl.int64)
    x_ptr += row * x_stride
    out_ptr += row * out_stride
    out_dtype = out_ptr.dtype.element_ty
    if SINGLE_PASS:
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        scale = _scale(tl.max(tl.abs(x), axis=0))
        tl.store(out_ptr + cols, _quantize(x, scale, out_dtype, EMULATE_CASTS), mask=mask)
    else:
        peaks = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            peaks = tl.maximum(peaks, tl.abs(tl.load(x_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)))
        scale = _scale(tl.max(peaks, axis=0))
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = tl.load(x_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + cols, _quantize(x, scale, out_dtype, EMULATE_CASTS), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def qk_norm_rope_kernel(
    qk_ptr, weight_ptr, cos_ptr, sin_ptr, out_ptr,
    heads, head_dim, dim_float, qk_token_stride, qk_head_stride, cos_stride, sin_stride,
    out_token_stride, out_head_stride, eps,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """RMSNorm over head_dim (one weight row per head), then rotary embedding, for one token's group of heads.

    Qwen3's rotate_half convention: out = y * cos + rotate_half(y) * sin with
    rotate_half(y) = [-y[D/2:], y[:D/2]]. The partner of lane d is lane (d + D/2) mod D,
    loaded a second time (from cache) rather than shuffled between registers.
    """
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    dim = tl.arange(0, BLOCK_D)
    half = head_dim // 2
    partner = (dim + half) % head_dim
    mask = (head < heads)[:, None] & (dim < head_dim)[None, :]
    base = qk_ptr + token * qk_token_stride + head[:, None] * qk_head_stride
    x = tl.load(base + dim[None, :], mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(base + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    weight_row = weight_ptr + head[:, None] * head_dim
    weight = tl.load(weight_row + dim[None, :], mask=mask, other=0.0).to(tl.float32)
    weight_partner = tl.load(weight_row + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(tl.sum(x * x, axis=1), dim_float) + eps))[:, None]
    y = x * rstd * weight
    y_partner = x_partner * rstd * weight_partner
    dim_mask = dim < head_dim
    cos = tl.load(cos_ptr + token * cos_stride + dim, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + token * sin_stride + dim, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    rotated = tl.where((dim < half)[None, :], -y_partner, y_partner)
    out = y * cos + rotated * sin
    out_ptrs = out_ptr + token * out_token_stride + head[:, None] * out_head_stride + dim[None, :]
    tl.store(out_ptrs, _narrow(out, out_ptr.dtype.element_ty, EMULATE_CASTS), mask=mask)
