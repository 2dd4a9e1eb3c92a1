"""The FP8 (E4M3) quantization recipe: its constants and the plain-PyTorch
quantizers every other implementation is checked against. One source of
truth, imported by `rerank_engine.fp8` (the linear layers and checkpoints),
`rerank_engine.kernels` (the fused kernels' fallbacks) and
`rerank_engine.triton_kernels` (the kernels themselves); it imports none of
them, so the three form no import circle.

- Format: E4M3 (`torch.float8_e4m3fn`), largest finite value `FP8_MAX` = 448.
- Weights: one scale per output channel, `scale[n] = max(amax(W[n, :]), AMAX_FLOOR) / FP8_MAX`,
  quantized once at load. Per-channel scales make fusing layers exact: the q|k and gate|up
  products of `rerank_engine.packed` are row concatenations of weights *and* scales (`Fp8Weight.cat`).
- Activations: dynamic, one scale per token (row), the same formula over the row.
- Quantizing: `q = fp8(clamp(x / scale, -FP8_MAX, FP8_MAX))`, computed in float32 with an IEEE
  division and round-to-nearest-even into E4M3. The clamp is a guard: under its row's own scale
  no value exceeds 448 by more than float32's last bit, but a conversion past 448 is not
  saturating everywhere (Triton's interpreter wraps, see `rerank_engine.triton_kernels`).
  `AMAX_FLOOR` keeps an all-zero row's scale finite (its values quantize to 0 and come back as 0),
  so no row ever divides by zero. A kernel may multiply by the row's reciprocal scale instead of
  dividing (float32's last bit apart: an E4M3 rounding moves by one step only where the quotient
  lies within that bit of a tie between two E4M3 values).
- Dequantized value: `float(q) * scale`. A product of two quantized operands is
  `(x_q @ w_q.T) * scale_x[m] * scale_w[n]`, which is what `torch._scaled_mm` computes with
  row-wise scales on Hopper/Ada.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)
"""448: E4M3 (the 'fn' variant: no infinities, one NaN pattern) tops out at 1.75 * 2^8."""
AMAX_FLOOR = 1e-12
"""The smallest row maximum a scale is computed from (the epsilon of fbgemm's Triton FP8 quantization kernels)."""
SCALED_MM_CAPABILITY = (8, 9)
"""FP8 tensor cores: Ada (8.9) and Hopper (9.0) and later."""


def scale_from_amax(amax: torch.Tensor) -> torch.Tensor:
    """The recipe's scale for rows whose largest magnitude is `amax` (float32)."""
    return amax.float().clamp(min=AMAX_FLOOR) / FP8_MAX


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`x` in E4M3 under `scale` (broadcast against `x`), rounding to nearest even."""
    return torch.div(x.float(), scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row quantization of `x` [..., K] in plain PyTorch: (E4M3 values, float32 scales [..., 1]).

    The reference every kernel of `rerank_engine.kernels` is checked against, and the fallback
    where those kernels do not run.
    """
    x32 = x.float()
    scale = scale_from_amax(x32.abs().amax(dim=-1, keepdim=True))
    return quantize_with_scale(x32, scale), scale
