"""FP8 (E4M3) linear layers for the rerankers: the quantization recipe, the
matrix product, a drop-in `nn.Linear` replacement, and loading checkpoints
that already hold FP8 weights.

The recipe itself (format, scales, rounding) is `rerank_engine.fp8_recipe`'s; this module
imports it and `rerank_engine.kernels`, and neither imports this one.

Checkpoints that already hold FP8 weights (`load_fp8_checkpoint`) are read as they are: per-tensor
and per-channel scales are used directly, block-wise ones are converted (see `_block_to_channel`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from rerank_engine import kernels
from rerank_engine.fp8_recipe import FP8_DTYPE, SCALED_MM_CAPABILITY, quantize_rows

log = logging.getLogger(__name__)

SCALED_MM_ALIGNMENT = 16
"""`torch._scaled_mm` needs both dimensions of the weight to be multiples of 16."""


@dataclass(frozen=True)
class Fp8Weight:
    """A linear layer's weight in E4M3: `weight` [N, K] row-major, `scale` [N] float32 (per output channel)."""

    weight: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self) -> None:
        if self.weight.dtype != FP8_DTYPE or self.weight.dim() != 2 or not self.weight.is_contiguous():
            raise ValueError(f"Fp8Weight.weight must be a contiguous 2-D {FP8_DTYPE} tensor, got "
                             f"{self.weight.dtype} {tuple(self.weight.shape)}")
        if self.scale.dtype != torch.float32 or tuple(self.scale.shape) != (self.weight.shape[0],):
            raise ValueError(f"Fp8Weight.scale must be float32 [{self.weight.shape[0]}], got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.scale[:, None]).to(dtype)

    def to(self, device: torch.device | str) -> "Fp8Weight":
        return Fp8Weight(self.weight.to(device), self.scale.to(device))

    @classmethod
    def cat(cls, weights: Iterable["Fp8Weight"]) -> "Fp8Weight":
        """The weights stacked along the output dimension, as one fused product (q|k, gate|up): exact."""
        weights = list(weights)
        return cls(torch.cat([w.weight for w in weights]), torch.cat([w.scale for w in weights]))


def quantize_weight(weight: torch.Tensor) -> Fp8Weight:
    """A floating-point weight [N, K] in E4M3 with per-output-channel scales."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize_weight needs a 2-D floating-point weight, got {weight.dtype} {tuple(weight.shape)}")
    values, scale = quantize_rows(weight.detach())
    return Fp8Weight(values.contiguous(), scale.reshape(-1).contiguous())


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of activations `x` [..., K]: (E4M3 [..., K], float32 scales [..., 1]).

    Runs the Triton kernel where `rerank_engine.kernels.available` says it can, plain PyTorch otherwise.
    """
    rows = x.reshape(-1, x.shape[-1])
    values, scale = kernels.per_token_quant(rows)
    return values.view(x.shape), scale.view(*x.shape[:-1], 1)


@lru_cache(maxsize=None)
def _has_fp8_tensor_cores(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= SCALED_MM_CAPABILITY


def scaled_mm_available(device: torch.device) -> bool:
    """True where `torch._scaled_mm` runs E4M3 products: CUDA devices of compute capability 8.9 or more."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    return _has_fp8_tensor_cores(device.index if device.index is not None else torch.cuda.current_device())


def fp8_linear(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: Fp8Weight,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    fast_accum: bool = False,
) -> torch.Tensor:
    """`(x_q * x_scale) @ (weight.weight * weight.scale).T + bias` in `out_dtype`.

    `x_q` [M, K] E4M3 and `x_scale` [M, 1] float32 come from `quantize_per_token` or a fused kernel
    of `rerank_engine.kernels`. On FP8 tensor cores this is `torch._scaled_mm` with row-wise scales
    (a CUTLASS kernel that applies both scales in its epilogue); elsewhere, and for a weight whose
    dimensions are not multiples of 16, a float32 emulation of the same arithmetic: both operands
    dequantized (E4M3 value times its scale, exact to float32's last bit), then one float32 product;
    it differs from the hardware in summation order and in the hardware's bf16 output rounding.

    `fast_accum` (tensor cores only) lets Hopper accumulate in its faster, less precise FP8 mode.
    Row-wise `_scaled_mm` writes bfloat16; another `out_dtype` is a conversion of that.
    """
    if x_q.dtype != FP8_DTYPE or x_q.dim() != 2 or x_q.shape[1] != weight.in_features:
        raise ValueError(f"fp8_linear needs x_q as {FP8_DTYPE} [M, {weight.in_features}], got "
                         f"{x_q.dtype} {tuple(x_q.shape)}")
    if x_scale.dtype != torch.float32 or tuple(x_scale.shape) != (x_q.shape[0], 1):
        raise ValueError(f"fp8_linear needs x_scale as float32 [{x_q.shape[0]}, 1], got "
                         f"{x_scale.dtype} {tuple(x_scale.shape)}")
    aligned = weight.in_features % SCALED_MM_ALIGNMENT == 0 and weight.out_features % SCALED_MM_ALIGNMENT == 0
    if aligned and scaled_mm_available(x_q.device):
        # The weight goes in as w.t(): [K, N] column-major, the layout cuBLASLt/CUTLASS want for mat2.
        out = torch._scaled_mm(
            x_q,
            weight.weight.t(),
            scale_a=x_scale,
            scale_b=weight.scale.view(1, -1),
            out_dtype=torch.bfloat16,
            use_fast_accum=fast_accum,
        )
        if isinstance(out, tuple):  # torch < 2.4 returned (out, amax); 2.4 to 2.13 return the tensor
            out = out[0]
        if bias is not None:
            out = out + bias.to(out.dtype)
    else:
        # Dequantize both operands, then one float32 product: the scaling touches the inputs, not the larger output.
        x_values = x_q.float().mul_(x_scale)
        w_values = weight.weight.float().mul_(weight.scale[:, None])
        out = x_values @ w_values.t() if bias is None else torch.addmm(bias.float(), x_values, w_values.t())
    return out.to(out_dtype)


class Fp8Linear(nn.Module):
    """`nn.Linear` with an E4M3 weight: each call quantizes its input per token, then `fp8_linear`.

    For generic (padded) forward passes; the packed Qwen3 path calls the fused kernels of
    `rerank_engine.kernels` and `fp8_linear` itself. The output has the input's dtype.
    `Module.to(dtype)` moves the module but keeps E4M3 weights and float32 scales.
    """

    def __init__(self, weight: Fp8Weight, bias: torch.Tensor | None = None, fast_accum: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.fast_accum = fast_accum
        self.register_buffer("weight", weight.weight)
        self.register_buffer("weight_scale", weight.scale)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, linear: nn.Linear, fast_accum: bool = False) -> "Fp8Linear":
        return cls(quantize_weight(linear.weight), linear.bias, fast_accum)

    @property
    def fp8_weight(self) -> Fp8Weight:
        return Fp8Weight(self.weight, self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, scale = quantize_per_token(x.reshape(-1, self.in_features))
        out = fp8_linear(values, scale, self.fp8_weight, self.bias, out_dtype=x.dtype, fast_accum=self.fast_accum)
        return out.view(*x.shape[:-1], self.out_features)

    def _apply(self, fn, recurse=True):
        scale = self.weight_scale
        super()._apply(fn, recurse)
        # Module.to(dtype) re-types every floating tensor. E4M3 values survive a round trip through
        # any wider float, so casting back is exact; float32 scales would not survive bfloat16.
        if self.weight.dtype != FP8_DTYPE:
            self.weight = self.weight.to(FP8_DTYPE)
        if self.weight_scale.dtype != torch.float32:
            self.weight_scale = scale.to(self.weight_scale.device)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, fp8=e4m3")


def _replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent_name), attribute, module)


def quantize_linears(module: nn.Module, skip: Iterable[str] = (), fast_accum: bool = False,
                     device: torch.device | None = None) -> dict[str, Fp8Linear]:
    """Replace `module`'s `nn.Linear` layers by `Fp8Linear`s in place; returns them by qualified name.

    Only `nn.Linear` instances change: embeddings and norms are other module types and stay as
    they are. `skip` holds shell-style patterns matched against qualified names (`"lm_head"`,
    `"pooler.*"`, `"*.classifier"`): the caller names the heads to keep. With `device`, each layer
    is moved there and quantized there one at a time, so a model loaded on the host never has all
    its full-precision linear weights on the device at once.
    """
    patterns = tuple(skip)
    # Names only: a list of the modules themselves would keep every replaced full-precision layer alive to the
    # end, and with `device` they would pile up there (on an H200 the FP8 8B load peaked at 21 GB that way).
    names = [name for name, child in module.named_modules()
             if isinstance(child, nn.Linear) and not any(fnmatchcase(name, p) for p in patterns)]
    if "" in names:
        raise ValueError("quantize_linears replaces submodules; wrap a bare nn.Linear with Fp8Linear.from_linear")
    swapped: dict[str, Fp8Linear] = {}
    for name in names:
        source = module.get_submodule(name)
        if device is not None:
            source = source.to(device)
        swapped[name] = Fp8Linear.from_linear(source, fast_accum=fast_accum)
        _replace_module(module, name, swapped[name])
        del source
    return swapped


# ---------------------------------------------------------------------------------------------
# Checkpoints that already hold FP8 weights.
#
# The formats, as the two loaders that define them name their tensors:
# - compressed-tensors (llm-compressor; `quant_method: "compressed-tensors"`): each
#   `config_groups.*.weights` says `num_bits: 8, type: "float"` and a `strategy`; the tensors are
#   `<module>.weight` (E4M3) and `<module>.weight_scale`, [N, 1] for "channel", one value for
#   "tensor", [ceil(N/bn), ceil(K/bk)] for "block" with `block_structure: [bn, bk]`. vLLM:
#   vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_w8a8_fp8.py
#   (CompressedTensorsW8A8Fp8.create_weights) with create_fp8_scale_parameter in
#   vllm/model_executor/layers/quantization/utils/fp8_utils.py.
# - `quant_method: "fp8"`: Hugging Face's fine-grained FP8 (FineGrainedFP8Config; Qwen's official
#   -FP8 releases) has `weight_block_size: [128, 128]` and `<module>.weight_scale_inv`
#   [ceil(N/128), ceil(K/128)]; despite the name it multiplies: w = fp8 * scale_inv
#   (transformers/integrations/finegrained_fp8.py, FP8Linear and _dequantize_fp8_weight). Without
#   a block size the scale is per tensor: `weight_scale` in vLLM/AutoFP8 checkpoints
#   (vllm/model_executor/layers/quantization/fp8.py, Fp8LinearMethod.create_weights), a scalar
#   `weight_scale_inv` in transformers' FP8Linear.
# - `quant_method: "fbgemm_fp8"`: `<module>.weight_scale` [N, 1], per channel
#   (transformers/integrations/fbgemm_fp8.py, FbgemmFp8Linear).
# Static activation scales (`input_scale`) and KV-cache scales are not used: activations get
# dynamic per-token scales here, at least as fine as any static per-tensor one.
# ---------------------------------------------------------------------------------------------

STRATEGIES = ("tensor", "channel", "block")
_IGNORED_SUFFIXES = (".input_scale", ".output_scale", ".k_scale", ".v_scale", ".q_scale", ".weight_zero_point")


@dataclass(frozen=True)
class Fp8CheckpointFormat:
    """How a checkpoint's `quantization_config` stores FP8 weights."""

    method: str  # `quant_method` as config.json spells it
    strategies: frozenset[str]  # granularities the config declares, among STRATEGIES
    blocks: tuple[tuple[int, int], ...]  # (rows, columns) of each declared block shape
    scale_names: tuple[str, ...]  # tensor-name suffixes holding a weight's scale, in lookup order


def checkpoint_format(config: Mapping) -> Fp8CheckpointFormat | None:
    """The FP8 format of a model whose config.json is `config`; None when it declares no quantization.

    ValueError for a quantization that is not FP8 weights in a format listed above.
    """
    quantization = config.get("quantization_config")
    if not quantization:
        return None
    method = quantization.get("quant_method")
    if method == "compressed-tensors":
        strategies, blocks = set(), []
        for group_name, group in (quantization.get("config_groups") or {}).items():
            weights = group.get("weights")
            if weights is None:
                continue
            if weights.get("num_bits") != 8 or weights.get("type") != "float":
                raise ValueError(
                    f"compressed-tensors group {group_name!r} holds {weights.get('num_bits')}-bit "
                    f"{weights.get('type')} weights; only 8-bit float (FP8 E4M3) weights load"
                )
            if weights.get("symmetric") is False:
                raise ValueError(
                    f"compressed-tensors group {group_name!r} is asymmetric; FP8 weights load symmetric only"
                )
            strategy = weights.get("strategy")
            if strategy not in STRATEGIES:
                raise ValueError(f"compressed-tensors group {group_name!r} has strategy {strategy!r}; "
                                 f"expected one of {', '.join(STRATEGIES)}")
            strategies.add(strategy)
            if strategy == "block":
                blocks.append(_block_shape(weights.get("block_structure"), f"group {group_name!r} block_structure"))
        if not strategies:
            raise ValueError("compressed-tensors config has no group with quantized weights")
        return Fp8CheckpointFormat(method, frozenset(strategies), tuple(blocks), ("weight_scale",))
    if method == "fp8":
        if quantization.get("fmt", "e4m3") != "e4m3":
            raise ValueError(f"fp8 checkpoint in format {quantization['fmt']!r}; only e4m3 loads")
        block = quantization.get("weight_block_size")
        if block is not None:
            return Fp8CheckpointFormat(method, frozenset({"block"}), (_block_shape(block, "weight_block_size"),),
                                       ("weight_scale_inv",))
        return Fp8CheckpointFormat(method, frozenset({"tensor"}), (), ("weight_scale", "weight_scale_inv"))
    if method == "fbgemm_fp8":
        return Fp8CheckpointFormat(method, frozenset({"channel"}), (), ("weight_scale",))
    raise ValueError(f"checkpoint quantization {method!r} is not an FP8 format this engine loads "
                     "(compressed-tensors, fp8, fbgemm_fp8)")


def _block_shape(value, what: str) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"{what} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def checkpoint_weight(name: str, weight: torch.Tensor, scale: torch.Tensor, fmt: Fp8CheckpointFormat) -> Fp8Weight:
    """One stored E4M3 weight and its stored scale as an `Fp8Weight` with per-channel scales.

    The granularity is read off the scale's shape and must be one the config declares.
    """
    if weight.dtype != FP8_DTYPE or weight.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D {FP8_DTYPE} weight, got {weight.dtype} {tuple(weight.shape)}")
    rows, columns = weight.shape
    scale32 = scale.float()
    if scale.numel() == 1:
        # One scale for the whole matrix (a per-tensor scale, or a single block covering it):
        # broadcasting it to every channel changes no value.
        return Fp8Weight(weight.contiguous(), scale32.reshape(1).expand(rows).contiguous())
    if "channel" in fmt.strategies and tuple(scale.shape) in ((rows,), (rows, 1)):
        return Fp8Weight(weight.contiguous(), scale32.reshape(rows).contiguous())
    for block_rows, block_columns in fmt.blocks:
        if tuple(scale.shape) == (math.ceil(rows / block_rows), math.ceil(columns / block_columns)):
            return _block_to_channel(weight, scale32, (block_rows, block_columns))
    raise ValueError(
        f"{name}: scale of shape {tuple(scale.shape)} fits none of the {fmt.method} checkpoint's granularities "
        f"({', '.join(sorted(fmt.strategies))}{', blocks ' + str(list(fmt.blocks)) if fmt.blocks else ''}) "
        f"for a [{rows}, {columns}] weight"
    )


def _block_to_channel(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> Fp8Weight:
    """Block-wise scales have no per-channel equivalent (one row crosses several column blocks),
    and row-wise `_scaled_mm` takes per-channel scales only. So the weight is dequantized with its
    block scales and quantized again per channel: a second rounding, within half an E4M3 step of
    the per-channel grid, where per-tensor and per-channel checkpoints load bit for bit.
    """
    rows, columns = weight.shape
    expanded = scale.repeat_interleave(block[0], dim=0)[:rows].repeat_interleave(block[1], dim=1)[:, :columns]
    return quantize_weight(weight.float() * expanded)


@dataclass
class Fp8Checkpoint:
    """What `load_fp8_checkpoint` returns."""

    model: nn.Module  # the transformers model; its FP8 linear layers are `Fp8Linear`s holding `weights`
    weights: dict[str, Fp8Weight]  # by qualified module name ("model.layers.0.self_attn.q_proj")
    format: Fp8CheckpointFormat


def read_checkpoint_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} has no model.safetensors(.index.json): FP8 checkpoints load from safetensors")


def load_fp8_checkpoint(
    folder: Path | str, auto_class, dtype: torch.dtype = torch.bfloat16, **model_kwargs
) -> Fp8Checkpoint:
    """Load a checkpoint whose config.json declares FP8 weights, keeping them in E4M3.

    `auto_class` is the transformers auto class the engine uses for the model kind
    (`AutoModelForCausalLM` for Qwen3, ...); `model_kwargs` go to `from_pretrained`
    (`attn_implementation`, ...). Every tensor that is not an FP8 linear weight or a scale loads
    in `dtype`. transformers' own FP8 quantizers are bypassed on purpose: they need a GPU and
    accelerate, and would run their own kernels rather than ours. The model is built from a
    state dict in which each FP8 weight is a zero-stride placeholder (no memory), then those
    linear layers are replaced by `Fp8Linear`s.
    """
    from safetensors import safe_open
    from transformers import AutoConfig

    folder = Path(folder)
    fmt = checkpoint_format(read_checkpoint_config(folder))
    if fmt is None:
        raise ValueError(f"{folder}/config.json declares no quantization_config: load it as a regular checkpoint")
    tensors: dict[str, torch.Tensor] = {}
    for path in _safetensors_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)

    weights: dict[str, Fp8Weight] = {}
    state: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    ignored = sorted(key for key in tensors if key.endswith(_IGNORED_SUFFIXES))
    for key, tensor in tensors.items():
        if tensor.dtype != FP8_DTYPE:
            continue
        if not key.endswith(".weight"):
            raise ValueError(f"{key} is stored in FP8 but is not a layer's weight")
        module = key[: -len(".weight")]
        scale_key = next((f"{module}.{n}" for n in fmt.scale_names if f"{module}.{n}" in tensors), None)
        if scale_key is None:
            raise ValueError(f"{key} is FP8 but the checkpoint has no {' or '.join(fmt.scale_names)} for it")
        weights[module] = checkpoint_weight(key, tensor, tensors[scale_key], fmt)
        consumed.update((key, scale_key))
        # Zero-stride placeholder: from_pretrained assigns it without copying, and it is replaced below.
        state[key] = torch.zeros((), dtype=dtype).expand(tensor.shape)
    if not weights:
        raise ValueError(f"{folder} declares {fmt.method} quantization but stores no FP8 weight")
    for key, tensor in tensors.items():
        if key in consumed or key in ignored or key.endswith((".weight_scale", ".weight_scale_inv")):
            continue
        state[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    if ignored:
        log.info("%s: not using %d static activation/cache scales (activations get dynamic per-token scales)",
                 folder.name, len(ignored))

    config = AutoConfig.from_pretrained(folder)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else from_pretrained hands the checkpoint to transformers' quantizer
    model_class = auto_class._model_mapping[type(config)]
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype, **model_kwargs)
    by_module: dict[str, Fp8Weight] = {}
    for key, weight in weights.items():
        name = _module_in_model(model, key)
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear) or tuple(linear.weight.shape) != tuple(weight.weight.shape):
            raise ValueError(
                f"{key}.weight is FP8 but {name} is not an nn.Linear of shape {tuple(weight.weight.shape)}"
            )
        _replace_module(model, name, Fp8Linear(weight, linear.bias))
        by_module[name] = weight
    if "block" in fmt.strategies:
        log.info("%s: block-wise FP8 scales converted to per-channel ones (dequantized and quantized again)",
                 folder.name)
    return Fp8Checkpoint(model.eval(), by_module, fmt)


def _module_in_model(model: nn.Module, checkpoint_name: str) -> str:
    """The model's name for a checkpoint's module: transformers loads a bare base model's checkpoint
    into a model with a head (and back) by adding or removing `base_model_prefix`, and so do we."""
    prefix = getattr(model, "base_model_prefix", "")
    for name in (checkpoint_name, f"{prefix}.{checkpoint_name}",
                 checkpoint_name.removeprefix(f"{prefix}.") if prefix else checkpoint_name):
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            continue
    raise ValueError(f"the checkpoint's FP8 layer {checkpoint_name} is not a module of {type(model).__name__}")
