"""Fused element-wise kernels around the rerankers' matrix products, each a Triton
kernel with a plain-PyTorch fallback of the same arithmetic:

- `rms_norm_quant`: [residual add,] RMSNorm, per-token FP8 quantization: the
  input of q/k/v and gate/up in FP8, with the residual stream updated in passing;
- `silu_mul_quant` / `silu_mul`: SiLU(gate) * up of the fused gate|up product,
  in FP8 for down_proj (or bfloat16 for the bf16 path);
- `per_token_quant`: FP8 quantization of an input no kernel produces
  (attention's output before o_proj);
- `qk_norm_rope`: Qwen3's per-head q/k RMSNorm and rotary embedding, in one pass;
- `add_layer_norm` / `embed_layer_norm` (bge-reranker-base, XLM-RoBERTa): a projection's bias, the
  residual add and LayerNorm in one pass; the embeddings' two gathers, adds and LayerNorm in one.

Quantizing where the activation is produced is what makes FP8 products pay:
measured on an H200, a separate quantization pass before each product made the
FP8 layer slower than bf16 (issue 11). The recipe is `rerank_engine.fp8_recipe`'s.

Everything computes in float32 and rounds once, at the output. Where the bf16
model rounds in between (transformers' RMSNorm rounds the normalized value to
bf16 before the weight multiply; SiLU and the product round separately) the
fused result is the more precise one.

Triton is imported on first use, and only where `available` says the kernels
run: a CUDA device (FP8 outputs need compute capability 8.9), or CPU tensors
under Triton's interpreter (TRITON_INTERPRET=1), which is how the CPU tests
check each kernel against its fallback. Elsewhere each function runs its
fallback. The kernels themselves are in `rerank_engine.triton_kernels`.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.nn.functional as F

from rerank_engine.fp8_recipe import FP8_DTYPE, SCALED_MM_CAPABILITY, quantize_rows

MAX_SINGLE_BLOCK = 8192
"""Rows up to this many columns are held in registers in one block (Qwen3's hidden sizes 2,560 and 4,096);
longer ones (intermediate 9,728 and 12,288) loop over blocks of LOOP_BLOCK columns."""
LOOP_BLOCK = 4096
QK_TILE = 2048
"""Values per qk_norm_rope program: BLOCK_H heads of head_dim each."""


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (the variable must be set before the kernels are built)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=1)
def _triton_kernels():
    try:
        from rerank_engine import triton_kernels
    except ImportError:
        return None
    return triton_kernels


@lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def available(device: torch.device, fp8: bool = True) -> bool:
    """Whether the Triton kernels run on `device`; `fp8`: kernels that write FP8 (all but silu_mul, qk_norm_rope)."""
    if device.type == "cpu":
        return interpreting() and _triton_kernels() is not None
    if device.type != "cuda" or interpreting() or _triton_kernels() is None:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return not fp8 or _capability(index) >= SCALED_MM_CAPABILITY


def _block(columns: int, block: int | None) -> tuple[int, bool]:
    """(BLOCK, SINGLE_PASS) for rows of `columns`; `block` forces a block size (tests use it to make rows loop)."""
    import triton

    if block is not None:
        block = triton.next_power_of_2(block)
        return block, block >= columns
    whole = triton.next_power_of_2(columns)
    return (whole, True) if whole <= MAX_SINGLE_BLOCK else (LOOP_BLOCK, False)


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8 if block <= 4096 else 16


def _launch_args() -> dict:
    return {"EMULATE_CASTS": interpreting()}


def _rows(x: torch.Tensor, what: str) -> None:
    if x.dim() != 2 or (x.shape[1] > 1 and x.stride(1) != 1):
        raise ValueError(f"{what} must be 2-D [tokens, columns] with contiguous columns, got shape "
                         f"{tuple(x.shape)} strides {x.stride()}")


def _device_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else _NoGuard()


class _NoGuard:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# -------------------------------------------------------------------------------------------
# rms_norm_quant
# -------------------------------------------------------------------------------------------


def rms_norm_quant_torch(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The fallback and reference of `rms_norm_quant`."""
    new_residual = None
    if residual is not None:
        new_residual = (x.float() + residual.float()).to(x.dtype)
        x = new_residual
    x32 = x.float()
    rstd = 1.0 / torch.sqrt(x32.pow(2).sum(dim=-1, keepdim=True) / x.shape[-1] + eps)
    values, scale = quantize_rows(x32 * rstd * weight.float())
    return (values, scale) if residual is None else (values, scale, new_residual)


def rms_norm_quant(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None, *, block: int | None = None
) -> tuple[torch.Tensor, ...]:
    """RMSNorm of `x` [tokens, hidden] (after adding `residual`, if given) quantized per token to FP8.

    Returns (values E4M3 [tokens, hidden], scale float32 [tokens, 1]) and, with `residual`, the
    new residual stream `x + residual` in `x`'s dtype as a third element: the norm reads that
    rounded sum, as the unfused model does. `weight` is the norm's [hidden] weight.
    """
    _rows(x, "x")
    if weight.shape != (x.shape[1],):
        raise ValueError(f"weight must be [{x.shape[1]}], got {tuple(weight.shape)}")
    if residual is not None:
        _rows(residual, "residual")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if not available(x.device):
        return rms_norm_quant_torch(x, weight, eps, residual)
    tokens, columns = x.shape
    values = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((tokens, 1), dtype=torch.float32, device=x.device)
    new_residual = torch.empty_like(x) if residual is not None else None
    if tokens == 0:
        return (values, scale) if residual is None else (values, scale, new_residual)
    block_size, single = _block(columns, block)
    with _device_guard(x):
        _triton_kernels().rms_norm_quant_kernel[(tokens,)](
            x, residual if residual is not None else x, new_residual if residual is not None else x,
            weight.contiguous(), values, scale,
            columns, float(columns), x.stride(0),
            residual.stride(0) if residual is not None else 0,
            new_residual.stride(0) if residual is not None else 0,
            values.stride(0), float(eps),
            HAS_RESIDUAL=residual is not None, BLOCK=block_size, SINGLE_PASS=single,
            num_warps=_warps(block_size), **_launch_args(),
        )
    return (values, scale) if residual is None else (values, scale, new_residual)


# -------------------------------------------------------------------------------------------
# silu_mul_quant / silu_mul
# -------------------------------------------------------------------------------------------


def _silu_mul_float(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    return gate / (1.0 + torch.exp(-gate)) * up


def silu_mul_quant_torch(gate_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback and reference of `silu_mul_quant`."""
    return quantize_rows(_silu_mul_float(gate_up))


def silu_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    """The fallback and reference of `silu_mul`."""
    return _silu_mul_float(gate_up).to(gate_up.dtype)


def _check_gate_up(gate_up: torch.Tensor) -> None:
    _rows(gate_up, "gate_up")
    if gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must hold gate and up halves of equal width, got {gate_up.shape[1]} columns")


SILU_MUL_QUANT_METHODS = ("one_pass", "split", "two_pass", "two_pass_exact")
"""How `silu_mul_quant` meets per-token scaling's need for the row's largest value before any value is quantized:
- `one_pass`: one program per row holds the row's SiLU*up in registers (two power-of-two blocks), reads it once;
- `split`: two kernels over (row, tile) programs, the first writing each tile's largest value, the second
  quantizing under the row's largest (SiLU*up computed twice, the input read twice, many more programs);
- `two_pass`: one program per row, looping twice over column blocks (the row re-read from cache);
- `two_pass_exact`: `two_pass` with IEEE division everywhere: the kernel as first shipped (bench baseline).
All but `two_pass_exact` divide approximately in SiLU and multiply by the row's reciprocal scale."""
SILU_MUL_QUANT_METHOD = "one_pass"
"""The shipped method (chosen by `bench.kernel_bench`; `bench.kernel_suite` times every method on the GPU)."""
MAX_REGISTER_ROW = 16384
"""`one_pass` holds rows up to this many columns in registers; longer ones run `two_pass`."""
SPLIT_TILE = 2048
"""Columns per program of the `split` method."""


def _head_tail(columns: int) -> tuple[int, int]:
    """Two powers of two covering `columns`: the largest one <= columns, and the smallest covering the rest (or 0)."""
    import triton

    head = triton.next_power_of_2(columns)
    if head != columns:
        head //= 2
    rest = columns - head
    return head, triton.next_power_of_2(rest) if rest else 0


def _silu_mul_launch(gate_up: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None, block: int | None,
                     fast: bool = True) -> None:
    tokens, half = out.shape
    if tokens == 0:
        return
    block_size, single = _block(half, block)
    with _device_guard(gate_up):
        _triton_kernels().silu_mul_kernel[(tokens,)](
            gate_up, out, scale if scale is not None else out, half, gate_up.stride(0), out.stride(0),
            QUANTIZE=scale is not None, BLOCK=block_size, SINGLE_PASS=single, FAST=fast,
            num_warps=_warps(block_size), **_launch_args(),
        )


def silu_mul_quant(gate_up: torch.Tensor, *, block: int | None = None,
                   method: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SiLU(gate) * up of `gate_up` [tokens, 2I] (gate | up halves, as `PackedQwen3` fuses them),
    quantized per token: (values E4M3 [tokens, I], scale float32 [tokens, 1]).

    `method`: one of SILU_MUL_QUANT_METHODS (default SILU_MUL_QUANT_METHOD); `block` forces the
    block size (two_pass*), the head block (one_pass: the tail covers the rest, up to the head's size, then
    two_pass takes over) or the tile (split): the tests use it to reach every branch on small rows.
    """
    _check_gate_up(gate_up)
    method = method or SILU_MUL_QUANT_METHOD
    if method not in SILU_MUL_QUANT_METHODS:
        raise ValueError(f"silu_mul_quant method {method!r} is not one of {', '.join(SILU_MUL_QUANT_METHODS)}")
    if not available(gate_up.device):
        return silu_mul_quant_torch(gate_up)
    tokens, half = gate_up.shape[0], gate_up.shape[1] // 2
    values = torch.empty((tokens, half), dtype=FP8_DTYPE, device=gate_up.device)
    scale = torch.empty((tokens, 1), dtype=torch.float32, device=gate_up.device)
    if tokens == 0:
        return values, scale
    if method == "one_pass":
        import triton

        head, tail = _head_tail(half)
        if block is not None:
            head = min(triton.next_power_of_2(block), head)
            rest = half - head
            tail = triton.next_power_of_2(rest) if rest else 0
        if head + tail <= MAX_REGISTER_ROW and tail <= head:
            with _device_guard(gate_up):
                _triton_kernels().silu_mul_quant_row_kernel[(tokens,)](
                    gate_up, values, scale, half, gate_up.stride(0), values.stride(0),
                    HEAD=head, TAIL=tail, num_warps=_warps(head + tail), **_launch_args(),
                )
            return values, scale
        method = "two_pass"
    if method == "split":
        import triton

        tile = triton.next_power_of_2(block) if block is not None else min(SPLIT_TILE, triton.next_power_of_2(half))
        tiles = triton.cdiv(half, tile)
        peaks = torch.empty((tokens, tiles), dtype=torch.float32, device=gate_up.device)
        kernels = _triton_kernels()
        with _device_guard(gate_up):
            kernels.silu_mul_peak_kernel[(tokens, tiles)](
                gate_up, peaks, half, gate_up.stride(0), tiles, TILE=tile, num_warps=_warps(tile))
            kernels.silu_mul_quant_tile_kernel[(tokens, tiles)](
                gate_up, peaks, values, scale, half, gate_up.stride(0), values.stride(0), tiles,
                TILE=tile, TILES=triton.next_power_of_2(tiles), num_warps=_warps(tile), **_launch_args(),
            )
        return values, scale
    _silu_mul_launch(gate_up, values, scale, block, fast=method == "two_pass")
    return values, scale


def silu_mul(gate_up: torch.Tensor, *, block: int | None = None) -> torch.Tensor:
    """SiLU(gate) * up of `gate_up` [tokens, 2I], in `gate_up`'s dtype: the bf16 path's fused activation."""
    _check_gate_up(gate_up)
    if not available(gate_up.device, fp8=False):
        return silu_mul_torch(gate_up)
    out = torch.empty((gate_up.shape[0], gate_up.shape[1] // 2), dtype=gate_up.dtype, device=gate_up.device)
    _silu_mul_launch(gate_up, out, None, block)
    return out


# -------------------------------------------------------------------------------------------
# per_token_quant
# -------------------------------------------------------------------------------------------


def per_token_quant_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback and reference of `per_token_quant`."""
    return quantize_rows(x)


def per_token_quant(x: torch.Tensor, *, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` [tokens, K] quantized per token: (values E4M3 [tokens, K], scale float32 [tokens, 1])."""
    _rows(x, "x")
    if not available(x.device):
        return per_token_quant_torch(x)
    tokens, columns = x.shape
    values = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((tokens, 1), dtype=torch.float32, device=x.device)
    if tokens == 0:
        return values, scale
    block_size, single = _block(columns, block)
    with _device_guard(x):
        _triton_kernels().per_token_quant_kernel[(tokens,)](
            x, values, scale, columns, x.stride(0), values.stride(0),
            BLOCK=block_size, SINGLE_PASS=single, num_warps=_warps(block_size), **_launch_args(),
        )
    return values, scale


# -------------------------------------------------------------------------------------------
# qk_norm_rope
# -------------------------------------------------------------------------------------------


def qk_norm_rope_torch(
    qk: torch.Tensor, norm_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """The fallback and reference of `qk_norm_rope`."""
    tokens, heads, head_dim = qk.shape
    x = qk.float()
    rstd = 1.0 / torch.sqrt(x.pow(2).sum(dim=-1, keepdim=True) / head_dim + eps)
    y = x * rstd * norm_weight.float()
    half = head_dim // 2
    rotated = torch.cat([-y[..., half:], y[..., :half]], dim=-1)
    cos = cos.reshape(tokens, 1, head_dim).float()
    sin = sin.reshape(tokens, 1, head_dim).float()
    return (y * cos + rotated * sin).to(qk.dtype)


def qk_norm_rope(
    qk: torch.Tensor, norm_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float
) -> torch.Tensor:
    """Qwen3's q/k RMSNorm (per head, over head_dim) followed by its rotary embedding.

    `qk` [tokens, heads, head_dim]: the q heads then the k heads of one product, as
    `PackedQwen3` builds it; `norm_weight` [heads, head_dim]: one weight row per head (q_norm's
    for q heads, k_norm's for k heads; they share eps); `cos`, `sin` [tokens, head_dim] (or
    [tokens, 1, head_dim]) as `Qwen3RotaryEmbedding` returns them for each token's position.
    Returns a new tensor of `qk`'s shape and dtype (bf16 in both precisions: attention stays bf16).
    """
    if qk.dim() != 3 or qk.stride(2) != 1:
        raise ValueError(f"qk must be [tokens, heads, head_dim] with contiguous head_dim, got {tuple(qk.shape)}")
    tokens, heads, head_dim = qk.shape
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
    if norm_weight.shape != (heads, head_dim):
        raise ValueError(f"norm_weight must be [{heads}, {head_dim}], got {tuple(norm_weight.shape)}")
    if cos.numel() != tokens * head_dim or sin.numel() != tokens * head_dim:
        raise ValueError(f"cos and sin must be [{tokens}, {head_dim}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if not available(qk.device, fp8=False):
        return qk_norm_rope_torch(qk, norm_weight, cos, sin, eps)
    out = torch.empty_like(qk, memory_format=torch.contiguous_format)
    if tokens == 0:
        return out
    import triton

    cos, sin = cos.reshape(tokens, head_dim), sin.reshape(tokens, head_dim)
    if cos.stride(1) != 1:
        cos = cos.contiguous()
    if sin.stride(1) != 1:
        sin = sin.contiguous()
    block_d = triton.next_power_of_2(head_dim)
    block_h = max(1, min(triton.next_power_of_2(heads), QK_TILE // block_d))
    with _device_guard(qk):
        _triton_kernels().qk_norm_rope_kernel[(tokens, triton.cdiv(heads, block_h))](
            qk, norm_weight.contiguous(), cos, sin, out,
            heads, head_dim, float(head_dim), qk.stride(0), qk.stride(1), cos.stride(0), sin.stride(0),
            out.stride(0), out.stride(1), float(eps),
            BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4, **_launch_args(),
        )
    return out



# -------------------------------------------------------------------------------------------
# add_layer_norm / embed_layer_norm (bge-reranker-base, XLM-RoBERTa)
# -------------------------------------------------------------------------------------------

NORM_ROWS = 4
"""Rows per program of the LayerNorm kernels: bge's rows are 768 values (1.5 KB in float16), too short
to keep a program busy alone."""


def add_layer_norm_torch(
    y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor, eps: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fallback and reference of `add_layer_norm`: the sum in float32, LayerNorm in float32, one rounding."""
    total = y.float() + residual.float()
    if bias is not None:
        total = total + bias.float()
    return F.layer_norm(total, (y.shape[-1],), weight.float(), shift.float(), eps).to(y.dtype)


def _norm_launch_shape(columns: int, rows_per_program: int | None) -> tuple[int, int, int, int]:
    head, tail = _head_tail(columns)
    rows = rows_per_program or NORM_ROWS
    return rows, head, tail, 4 if rows * (head + tail) <= 4096 else 8


def add_layer_norm(
    y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor, eps: float,
    bias: torch.Tensor | None = None, *, rows_per_program: int | None = None,
) -> torch.Tensor:
    """LayerNorm(y + bias + residual) over the last dimension, in `y`'s dtype: one kernel for what
    XLM-RoBERTa's `SelfOutput`/`Output` run as the projection's bias, an add and a LayerNorm.

    `y` [tokens, H] is the projection's output without its bias (a plain `mm`), `residual` [tokens, H] the
    stream before the block, `weight`/`shift` the LayerNorm's [H] weight and bias. The sum is not rounded
    to `y`'s dtype before the norm (the unfused model rounds it twice: after the biased product, after the add).
    """
    _rows(y, "y")
    _rows(residual, "residual")
    hidden = y.shape[1]
    if residual.shape != y.shape:
        raise ValueError(f"residual must have y's shape {tuple(y.shape)}, got {tuple(residual.shape)}")
    for name, vector in (("weight", weight), ("shift", shift), ("bias", bias)):
        if vector is not None and vector.shape != (hidden,):
            raise ValueError(f"{name} must be [{hidden}], got {tuple(vector.shape)}")
    if not available(y.device, fp8=False):
        return add_layer_norm_torch(y, residual, weight, shift, eps, bias)
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    tokens = y.shape[0]
    if tokens == 0:
        return out
    import triton

    rows, head, tail, warps = _norm_launch_shape(hidden, rows_per_program)
    with _device_guard(y):
        _triton_kernels().add_layer_norm_kernel[(triton.cdiv(tokens, rows),)](
            y, bias if bias is not None else y, residual, weight.contiguous(), shift.contiguous(), out,
            tokens, hidden, float(hidden), y.stride(0), residual.stride(0), out.stride(0), float(eps),
            HAS_BIAS=bias is not None, ROWS=rows, HEAD=head, TAIL=tail, num_warps=warps, **_launch_args(),
        )
    return out


def embed_layer_norm_torch(
    ids: torch.Tensor, positions: torch.Tensor, word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
    weight: torch.Tensor, shift: torch.Tensor, eps: float,
) -> torch.Tensor:
    """The fallback and reference of `embed_layer_norm`."""
    total = word[ids].float() + position[positions].float() + token_type.float()
    return F.layer_norm(total, (word.shape[1],), weight.float(), shift.float(), eps).to(word.dtype)


def embed_layer_norm(
    ids: torch.Tensor, positions: torch.Tensor, word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
    weight: torch.Tensor, shift: torch.Tensor, eps: float, *, rows_per_program: int | None = None,
) -> torch.Tensor:
    """XLM-RoBERTa's embeddings of packed tokens: LayerNorm(word[ids] + position[positions] + token_type),
    [tokens, H] in the tables' dtype, in one kernel (the model runs two gathers, two adds and a LayerNorm).

    `word` [V, H] and `position` [P, H] are the embedding tables, `token_type` [H] the one token type row
    bge uses (type 0), `weight`/`shift` the embeddings' LayerNorm.
    """
    if ids.dim() != 1 or positions.shape != ids.shape:
        raise ValueError(f"ids and positions must be 1-D of one length, got {tuple(ids.shape)} and {tuple(positions.shape)}")
    hidden = word.shape[1]
    if position.shape[1] != hidden or token_type.shape != (hidden,):
        raise ValueError(f"the position table and the token type row must be {hidden} wide")
    if not available(word.device, fp8=False):
        return embed_layer_norm_torch(ids, positions, word, position, token_type, weight, shift, eps)
    word, position = word.contiguous(), position.contiguous()
    out = torch.empty((ids.shape[0], hidden), dtype=word.dtype, device=word.device)
    if ids.shape[0] == 0:
        return out
    import triton

    rows, head, tail, warps = _norm_launch_shape(hidden, rows_per_program)
    with _device_guard(word):
        _triton_kernels().embed_layer_norm_kernel[(triton.cdiv(ids.shape[0], rows),)](
            ids.contiguous(), positions.contiguous(), word, position, token_type.contiguous(), weight.contiguous(),
            shift.contiguous(), out, ids.shape[0], hidden, float(hidden), hidden, out.stride(0), float(eps),
            ROWS=rows, HEAD=head, TAIL=tail, num_warps=warps, **_launch_args(),
        )
    return out
