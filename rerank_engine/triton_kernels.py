"""The Triton kernels behind `rerank_engine.kernels`. Importing this module imports
Triton, so only `rerank_engine.kernels` imports it, and only when the kernels can
run; call them through that module, which checks inputs and falls back to PyTorch.

One program per row (per token, or per token and group of heads for q/k): the
rows are short (2,560 to 12,288 values) and the work is memory-bound, so each
kernel reads its row once where one block holds it, and otherwise loops over
column blocks, reading the row again from cache for each later pass.

Arithmetic follows `rerank_engine.fp8_recipe` in float32: IEEE division and
square root (`div_rn`, `sqrt_rn`) for the per-row figures (scale, rstd) where
the PyTorch fallback divides; values are quantized by a multiplication with
the row's reciprocal scale (but in `per_token_quant`, see there), and SiLU
divides approximately (`/`): an IEEE division per value made the quantizing
kernels bound by instructions, not bytes. Kernel and fallback agree to the last bit but where a quotient lies
within float32's last bit of a rounding boundary (one E4M3 step then), and
`silu_mul_quant`'s `two_pass_exact` method keeps the first-shipped IEEE
arithmetic for comparison.

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
def _quantize_times(y, inverse_scale, dtype: tl.constexpr, EMULATE_CASTS: tl.constexpr):
    """`_quantize` by a multiplication with the row's reciprocal scale (one IEEE division per row, not per value)."""
    return _to_fp8(tl.clamp(y * inverse_scale, -_FP8_MAX, _FP8_MAX), dtype, EMULATE_CASTS)


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
        tl.store(out_ptr + cols, _quantize_times(y, tl.div_rn(1.0, scale), out_dtype, EMULATE_CASTS), mask=mask)
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
        inverse = tl.div_rn(1.0, scale)
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < n_cols
            x = _add_norm_block(x_ptr, residual_ptr, residual_out_ptr, cols, mask, HAS_RESIDUAL, False, EMULATE_CASTS)
            y = x * rstd * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + cols, _quantize_times(y, inverse, out_dtype, EMULATE_CASTS), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _silu_mul_block(row_ptr, cols, mask, half, FAST: tl.constexpr):
    gate = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row_ptr + half + cols, mask=mask, other=0.0).to(tl.float32)
    if FAST:
        # `/` is the GPU's approximate division (2 ulp; `exp` is approximate either way). IEEE division
        # costs a few dozen instructions, and SiLU*up is bound by instructions, not bytes, when it
        # divides twice per value (measured on an H200: 458 us where the bytes take ~85).
        return gate / (1.0 + tl.exp(-gate)) * up
    return tl.div_rn(gate, 1.0 + tl.exp(-gate)) * up


@triton.jit
def silu_mul_kernel(
    gate_up_ptr, out_ptr, scale_ptr, half, in_stride, out_stride,
    QUANTIZE: tl.constexpr, BLOCK: tl.constexpr, SINGLE_PASS: tl.constexpr, FAST: tl.constexpr,
    EMULATE_CASTS: tl.constexpr,
):
    """silu(gate) * up of one row of [gate | up], stored in bfloat16 or, with QUANTIZE, in E4M3 with its scale.

    A row longer than BLOCK is read twice: once for its largest value, once to quantize (recomputing SiLU*up).
    FAST: approximate division in SiLU and a reciprocal-scale multiply (the `two_pass` method); without it
    IEEE division everywhere (`two_pass_exact`, the kernel as first shipped).
    """
    row = tl.program_id(0).to(tl.int64)
    gate_up_ptr += row * in_stride
    out_ptr += row * out_stride
    out_dtype = out_ptr.dtype.element_ty
    if not QUANTIZE:
        for start in range(0, half, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < half
            tl.store(out_ptr + cols,
                     _narrow(_silu_mul_block(gate_up_ptr, cols, mask, half, FAST), out_dtype, EMULATE_CASTS),
                     mask=mask)
    elif SINGLE_PASS:
        cols = tl.arange(0, BLOCK)
        mask = cols < half
        y = _silu_mul_block(gate_up_ptr, cols, mask, half, FAST)
        scale = _scale(tl.max(tl.abs(y), axis=0))
        if FAST:
            tl.store(out_ptr + cols, _quantize_times(y, tl.div_rn(1.0, scale), out_dtype, EMULATE_CASTS), mask=mask)
        else:
            tl.store(out_ptr + cols, _quantize(y, scale, out_dtype, EMULATE_CASTS), mask=mask)
        tl.store(scale_ptr + row, scale)
    else:
        peaks = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, half, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            peaks = tl.maximum(peaks, tl.abs(_silu_mul_block(gate_up_ptr, cols, cols < half, half, FAST)))
        scale = _scale(tl.max(peaks, axis=0))
        inverse = tl.div_rn(1.0, scale)
        for start in range(0, half, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < half
            y = _silu_mul_block(gate_up_ptr, cols, mask, half, FAST)
            if FAST:
                tl.store(out_ptr + cols, _quantize_times(y, inverse, out_dtype, EMULATE_CASTS), mask=mask)
            else:
                tl.store(out_ptr + cols, _quantize(y, scale, out_dtype, EMULATE_CASTS), mask=mask)
        tl.store(scale_ptr + row, scale)


@triton.jit
def silu_mul_quant_row_kernel(
    gate_up_ptr, out_ptr, scale_ptr, half, in_stride, out_stride,
    HEAD: tl.constexpr, TAIL: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """`one_pass`: one row's SiLU*up computed once and held in registers until its scale is known.

    Triton blocks are powers of two, and one block of next_power_of_2(I) columns wastes 40% of its
    lanes on Qwen3-4B's 9,728 (the slower "whole row in one block" of the 2026-12-01 kernel_bench).
    Two blocks, HEAD (the largest power of two <= I) and TAIL (a power of two covering the rest),
    cover 9,728 as 8,192 + 2,048 and 12,288 as 8,192 + 4,096 exactly. Reads each input once.
    """
    row = tl.program_id(0).to(tl.int64)
    gate_up_ptr += row * in_stride
    out_ptr += row * out_stride
    out_dtype = out_ptr.dtype.element_ty
    cols = tl.arange(0, HEAD)
    mask = cols < half
    y = _silu_mul_block(gate_up_ptr, cols, mask, half, True)
    amax = tl.max(tl.abs(y), axis=0)
    if TAIL > 0:
        tail_cols = HEAD + tl.arange(0, TAIL)
        tail_mask = tail_cols < half
        y_tail = _silu_mul_block(gate_up_ptr, tail_cols, tail_mask, half, True)
        amax = tl.maximum(amax, tl.max(tl.abs(y_tail), axis=0))
    scale = _scale(amax)
    inverse = tl.div_rn(1.0, scale)
    tl.store(out_ptr + cols, _quantize_times(y, inverse, out_dtype, EMULATE_CASTS), mask=mask)
    if TAIL > 0:
        tl.store(out_ptr + tail_cols, _quantize_times(y_tail, inverse, out_dtype, EMULATE_CASTS), mask=tail_mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def silu_mul_peak_kernel(gate_up_ptr, peak_ptr, half, in_stride, tiles, TILE: tl.constexpr):
    """`split`, first kernel: the largest |SiLU*up| of one tile of one row, into peak[row, tile]."""
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    cols = tile * TILE + tl.arange(0, TILE)
    y = _silu_mul_block(gate_up_ptr + row * in_stride, cols, cols < half, half, True)
    tl.store(peak_ptr + row * tiles + tile, tl.max(tl.abs(y), axis=0))


@triton.jit
def silu_mul_quant_tile_kernel(
    gate_up_ptr, peak_ptr, out_ptr, scale_ptr, half, in_stride, out_stride, tiles,
    TILE: tl.constexpr, TILES: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """`split`, second kernel: one tile of one row quantized under the row's scale (from all its tiles' peaks)."""
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    slots = tl.arange(0, TILES)
    peaks = tl.load(peak_ptr + row * tiles + slots, mask=slots < tiles, other=0.0)
    scale = _scale(tl.max(peaks, axis=0))
    cols = tile * TILE + tl.arange(0, TILE)
    mask = cols < half
    y = _silu_mul_block(gate_up_ptr + row * in_stride, cols, mask, half, True)
    tl.store(out_ptr + row * out_stride + cols, _quantize_times(y, tl.div_rn(1.0, scale), out_ptr.dtype.element_ty,
                                                                 EMULATE_CASTS), mask=mask)
    if tile == 0:
        tl.store(scale_ptr + row, scale)


@triton.jit
def per_token_quant_kernel(
    x_ptr, out_ptr, scale_ptr, n_cols, x_stride, out_stride,
    BLOCK: tl.constexpr, SINGLE_PASS: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """Per-token E4M3 quantization of one row, by IEEE division: its input is bf16 as stored, whose few
    mantissa bits put many quotients exactly on a tie between two E4M3 values, where a reciprocal's
    last-bit error decides the tie the other way (0.2% of values, tests/engine/test_kernels.py)."""
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


# ---------------------------------------------------------------------------------------------
# bge-reranker-base (XLM-RoBERTa): the residual add, the output projection's bias and LayerNorm in one pass
# ---------------------------------------------------------------------------------------------


@triton.jit
def _layer_norm_store(head, tail, rows, row_mask, weight_ptr, bias_ptr, out_ptr, out_stride, n_float, eps,
                      HEAD: tl.constexpr, TAIL: tl.constexpr, n_cols, EMULATE_CASTS: tl.constexpr):
    """LayerNorm of float32 rows held as a [ROWS, HEAD] and a [ROWS, TAIL] block (masked lanes hold 0),
    stored in `out_ptr`'s dtype. Mean first, then the mean squared deviation (two passes over registers,
    as PyTorch's kernel computes it), eps inside the square root."""
    cols = tl.arange(0, HEAD)
    col_mask = cols < n_cols
    total = tl.sum(head, axis=1)
    if TAIL > 0:
        tail_cols = HEAD + tl.arange(0, TAIL)
        tail_mask = tail_cols < n_cols
        total += tl.sum(tail, axis=1)
    mean = tl.div_rn(total, n_float)[:, None]
    deviation = tl.where(col_mask[None, :], head - mean, 0.0)
    squares = tl.sum(deviation * deviation, axis=1)
    if TAIL > 0:
        tail_deviation = tl.where(tail_mask[None, :], tail - mean, 0.0)
        squares += tl.sum(tail_deviation * tail_deviation, axis=1)
    rstd = tl.div_rn(1.0, tl.sqrt_rn(tl.div_rn(squares, n_float) + eps))[:, None]
    out_dtype = out_ptr.dtype.element_ty
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    shift = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out_rows = out_ptr + rows[:, None] * out_stride
    tl.store(out_rows + cols[None, :], _narrow(deviation * rstd * weight + shift, out_dtype, EMULATE_CASTS),
             mask=row_mask[:, None] & col_mask[None, :])
    if TAIL > 0:
        weight = tl.load(weight_ptr + tail_cols, mask=tail_mask, other=0.0).to(tl.float32)[None, :]
        shift = tl.load(bias_ptr + tail_cols, mask=tail_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_rows + tail_cols[None, :],
                 _narrow(tail_deviation * rstd * weight + shift, out_dtype, EMULATE_CASTS),
                 mask=row_mask[:, None] & tail_mask[None, :])


@triton.jit
def _sum_block(cols, col_mask, rows, row_mask, y_ptr, y_stride, bias_ptr, residual_ptr, residual_stride,
               HAS_BIAS: tl.constexpr):
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(y_ptr + rows[:, None] * y_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(residual_ptr + rows[:, None] * residual_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return x


@triton.jit(do_not_specialize=["n_rows"])  # one compilation for every token count
def add_layer_norm_kernel(
    y_ptr, bias_ptr, residual_ptr, weight_ptr, shift_ptr, out_ptr,
    n_rows, n_cols, n_float, y_stride, residual_stride, out_stride, eps,
    HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """LayerNorm(y + bias + residual) of ROWS rows, the sum kept in float32 (never rounded to the stream's dtype).

    bge's hidden size 768 is 512 + 256: a HEAD and a TAIL block cover it without masked lanes.
    """
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    cols = tl.arange(0, HEAD)
    head = _sum_block(cols, cols < n_cols, rows, row_mask, y_ptr, y_stride, bias_ptr, residual_ptr,
                      residual_stride, HAS_BIAS)
    tail = head
    if TAIL > 0:
        tail_cols = HEAD + tl.arange(0, TAIL)
        tail = _sum_block(tail_cols, tail_cols < n_cols, rows, row_mask, y_ptr, y_stride, bias_ptr, residual_ptr,
                          residual_stride, HAS_BIAS)
    _layer_norm_store(head, tail, rows, row_mask, weight_ptr, shift_ptr, out_ptr, out_stride, n_float, eps,
                      HEAD, TAIL, n_cols, EMULATE_CASTS)


@triton.jit
def _embedding_block(cols, col_mask, rows, row_mask, ids, positions, word_ptr, position_ptr, type_ptr, table_stride):
    mask = row_mask[:, None] & col_mask[None, :]
    x = tl.load(word_ptr + ids[:, None] * table_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(position_ptr + positions[:, None] * table_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x += tl.load(type_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return x


@triton.jit(do_not_specialize=["n_rows"])  # one compilation for every token count
def embed_layer_norm_kernel(
    ids_ptr, positions_ptr, word_ptr, position_ptr, type_ptr, weight_ptr, shift_ptr, out_ptr,
    n_rows, n_cols, n_float, table_stride, out_stride, eps,
    ROWS: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, EMULATE_CASTS: tl.constexpr,
):
    """XLM-RoBERTa's embeddings: LayerNorm(word[id] + position[pos] + token_type[0]) of ROWS tokens, in one pass."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    ids = tl.load(ids_ptr + rows, mask=row_mask, other=0)
    positions = tl.load(positions_ptr + rows, mask=row_mask, other=0)
    cols = tl.arange(0, HEAD)
    head = _embedding_block(cols, cols < n_cols, rows, row_mask, ids, positions, word_ptr, position_ptr, type_ptr,
                            table_stride)
    tail = head
    if TAIL > 0:
        tail_cols = HEAD + tl.arange(0, TAIL)
        tail = _embedding_block(tail_cols, tail_cols < n_cols, rows, row_mask, ids, positions, word_ptr,
                                position_ptr, type_ptr, table_stride)
    _layer_norm_store(head, tail, rows, row_mask, weight_ptr, shift_ptr, out_ptr, out_stride, n_float, eps,
                      HEAD, TAIL, n_cols, EMULATE_CASTS)
