"""Building a scorer from a model's `config.pbtxt` parameters.

`EngineConfig.from_parameters` validates the parameters; `load_scorer` resolves
the weights folder, picks dtype and device, loads model and tokenizer, builds
the scorer with its execution choices (packed, CUDA graphs) and memory budget,
and prepares it, so the first real request pays for no lazy set-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import torch

from rerank_engine import catalog, contract
from rerank_engine.model_config import serving_dtype
from rerank_engine.packed import BGE_FUSIONS, varlen_kernel_available
from rerank_engine.scoring import Execution, Scorer
from rerank_engine.weights import require_weights, resolve_weights_path

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SCORER_KINDS = (contract.SCORER_CROSS_ENCODER, contract.SCORER_QWEN3, contract.SCORER_BI_ENCODER)
PACKED_SCORERS = (contract.SCORER_CROSS_ENCODER, contract.SCORER_QWEN3)
QUANTIZATIONS = ("none", "fp8")
KEPT_HEADS = {
    contract.SCORER_QWEN3: ("lm_head",),  # only its yes/no rows are read, in float32
    contract.SCORER_CROSS_ENCODER: ("classifier", "classifier.*"),
    contract.SCORER_BI_ENCODER: ("pooler", "pooler.*"),
}
"""With quantization fp8, the heads that stay in the serving dtype; embeddings and norms are not linear
layers and stay too."""


@dataclass(frozen=True)
class EngineConfig:
    scorer: str
    weights_path: str
    dtype: str = "auto"
    max_length: int = 512
    max_batch_tokens: int = 16384
    max_batch_size: int = 256
    chunk_tokens: int | None = None  # windows of chunked documents; None: max_length
    weights_hint: str = ""
    prefix_reuse: bool = True  # Qwen3 only: run each query's shared prompt head once
    cuda_graphs: bool = False  # GPU only: replay micro-batches from captured CUDA graphs
    packed: str = "auto"  # padding-free batches: auto (where the varlen kernel runs), true or false
    gpu_memory_budget_mib: int | None = None  # GPU only: the most device memory the model's allocator may hold
    quantization: str = "none"  # none, or fp8: E4M3 linear layers (weights per channel, activations per token)
    packed_graphs: bool = False  # cross_encoder, GPU: packed micro-batches replay graphs per token bucket
    fusions: tuple[str, ...] = ()  # cross_encoder, packed: PackedXLMRoberta.FUSIONS in use
    compile: bool = False  # cross_encoder, packed: torch.compile of the layers past attention
    pipeline_pairs: int = 0  # cross_encoder, packed: tokenize and launch a call this many pairs at a time

    @classmethod
    def from_parameters(cls, params: Mapping[str, str], max_batch_size: int = 256, model_name: str = "") -> "EngineConfig":
        def need(key: str) -> str:
            if not params.get(key):
                raise ValueError(f"config.pbtxt parameter '{key}' is required")
            return params[key]

        def positive_int(key: str, default: int) -> int:
            raw = params.get(key) or str(default)
            if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
                raise ValueError(f"config.pbtxt parameter '{key}' must be a positive integer, got {raw!r}")
            return int(raw)

        def flag(key: str, default: str) -> bool:
            value = params.get(key) or default
            if value not in ("true", "false"):
                raise ValueError(f"config.pbtxt parameter '{key}' must be true or false, got {value!r}")
            return value == "true"

        scorer = need(contract.PARAM_SCORER)
        if scorer not in SCORER_KINDS:
            raise ValueError(f"unknown scorer {scorer!r}; expected one of {', '.join(SCORER_KINDS)}")
        dtype = params.get(contract.PARAM_DTYPE) or "auto"
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
        max_length = positive_int(contract.PARAM_MAX_LENGTH, 512)
        prefix_reuse = flag(contract.PARAM_PREFIX_REUSE, "true")
        if contract.PARAM_PREFIX_REUSE in params and scorer != contract.SCORER_QWEN3:
            # Refused rather than ignored: a benchmark comparing on/off must not silently compare a model with itself.
            raise ValueError(
                f"config.pbtxt parameter '{contract.PARAM_PREFIX_REUSE}' applies to {contract.SCORER_QWEN3} only"
            )
        packed = params.get(contract.PARAM_PACKED) or "auto"
        if packed not in ("auto", "true", "false"):
            raise ValueError(f"config.pbtxt parameter '{contract.PARAM_PACKED}' must be auto, true or false, got {packed!r}")
        if packed == "true" and scorer not in PACKED_SCORERS:
            raise ValueError(
                f"config.pbtxt parameter '{contract.PARAM_PACKED}' applies to {' and '.join(PACKED_SCORERS)} only"
            )
        for key in (contract.PARAM_PACKED_GRAPHS, contract.PARAM_FUSIONS, contract.PARAM_COMPILE,
                    contract.PARAM_PIPELINE_PAIRS):
            if key in params and scorer != contract.SCORER_CROSS_ENCODER:
                raise ValueError(f"config.pbtxt parameter '{key}' applies to {contract.SCORER_CROSS_ENCODER} only")
        fusions = parse_fusions(params.get(contract.PARAM_FUSIONS) or "none")
        compile_layers = flag(contract.PARAM_COMPILE, "false")
        if compile_layers and "add_norm" in fusions:
            raise ValueError(f"config.pbtxt parameters '{contract.PARAM_COMPILE}' and the add_norm fusion both fuse "
                             "the add and LayerNorm: choose one")
        pipeline_raw = params.get(contract.PARAM_PIPELINE_PAIRS) or "0"
        if not (pipeline_raw.isascii() and pipeline_raw.isdigit()):
            raise ValueError(f"config.pbtxt parameter '{contract.PARAM_PIPELINE_PAIRS}' must be 0 or a positive "
                             f"integer, got {pipeline_raw!r}")
        quantization = params.get(contract.PARAM_QUANTIZATION) or "none"
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"config.pbtxt parameter '{contract.PARAM_QUANTIZATION}' must be one of "
                             f"{', '.join(QUANTIZATIONS)}, got {quantization!r}")
        return cls(
            scorer=scorer,
            weights_path=need(contract.PARAM_WEIGHTS_PATH),
            dtype=dtype,
            max_length=max_length,
            max_batch_tokens=max(positive_int(contract.PARAM_MAX_BATCH_TOKENS, 16384), max_length),
            chunk_tokens=(min(positive_int(contract.PARAM_CHUNK_TOKENS, max_length), max_length)
                          if params.get(contract.PARAM_CHUNK_TOKENS) else None),
            max_batch_size=max_batch_size,
            weights_hint=params.get(contract.PARAM_WEIGHTS_HINT) or catalog.download_hint(model_name),
            prefix_reuse=prefix_reuse,
            cuda_graphs=flag(contract.PARAM_CUDA_GRAPHS, "false"),
            packed=packed,
            gpu_memory_budget_mib=(positive_int(contract.PARAM_GPU_MEMORY_BUDGET_MIB, 1)
                                   if params.get(contract.PARAM_GPU_MEMORY_BUDGET_MIB) else None),
            quantization=quantization,
            packed_graphs=flag(contract.PARAM_PACKED_GRAPHS, "false"),
            fusions=fusions,
            compile=compile_layers,
            pipeline_pairs=int(pipeline_raw),
        )

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        return DTYPES[serving_dtype(self.scorer, self.dtype, on_gpu=device.type == "cuda")]


def parse_fusions(value: str) -> tuple[str, ...]:
    """The `fusions` parameter: `none`, `all`, or a comma-separated subset of BGE_FUSIONS (in that order)."""
    if value == "none":
        return ()
    if value == "all":
        return BGE_FUSIONS
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = names - set(BGE_FUSIONS)
    if unknown or not names:
        raise ValueError(f"config.pbtxt parameter '{contract.PARAM_FUSIONS}' must be none, all or a comma-separated "
                         f"subset of {', '.join(BGE_FUSIONS)}, got {value!r}")
    return tuple(name for name in BGE_FUSIONS if name in names)


def resolve_device(instance_kind: str, device_id: int | str = 0) -> torch.device:
    """Triton's instance kind (`GPU`, `CPU`, ...) to a torch device."""
    if instance_kind.upper() == "GPU":
        return torch.device("cuda", int(device_id))
    return torch.device("cpu")


def position_limit(model_config) -> int:
    """Longest sequence the model's position embeddings cover; RoBERTa-style
    models start counting after the padding index."""
    offset = model_config.pad_token_id + 1 if model_config.model_type in ("xlm-roberta", "roberta") else 0
    return model_config.max_position_embeddings - offset


def load_scorer(config: EngineConfig, device: torch.device) -> Scorer:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rerank_engine.bi_encoder import BiEncoderScorer
    from rerank_engine.cross_encoder import CrossEncoderScorer
    from rerank_engine.qwen3 import Qwen3RerankerScorer

    folder = require_weights(resolve_weights_path(config.weights_path), config.weights_hint)
    kinds = {
        contract.SCORER_CROSS_ENCODER: (AutoModelForSequenceClassification, CrossEncoderScorer),
        contract.SCORER_QWEN3: (AutoModelForCausalLM, Qwen3RerankerScorer),
        contract.SCORER_BI_ENCODER: (AutoModel, BiEncoderScorer),
    }
    auto_model, scorer_cls = kinds[config.scorer]
    options = {"prefix_reuse": config.prefix_reuse} if config.scorer == contract.SCORER_QWEN3 else {}
    dtype = config.torch_dtype(device)
    if device.type == "cuda":
        # The instance's own GPU becomes the process's current device: CUDA graphs capture on the current
        # device's streams (on an instance placed on cuda:1 every capture failed), and nothing creates a
        # context on cuda:0 on the side.
        torch.cuda.set_device(device)
        # cuDNN's SDPA builds a plan per sequence length, and every request brings new lengths:
        # on an H100 that cost ~150 ms per 100-pair bge request against ~15 ms of kernels.
        # Flash / memory-efficient attention have no per-shape set-up.
        torch.backends.cuda.enable_cudnn_sdp(False)
    log.info("loading %s from %s as %s%s on %s", config.scorer, folder, dtype,
             " with FP8 linear layers" if config.quantization == "fp8" else "", device)
    model = _load_model(folder, auto_model, dtype, device, config)
    # Inference only: parameters that require gradients make any pass outside inference mode record
    # autograd history, which a captured CUDA graph's output would keep alive.
    model.requires_grad_(False)
    if config.max_length > (limit := position_limit(model.config)):
        raise ValueError(f"max_length {config.max_length} is over the {limit} positions {folder.name} was trained for")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    scorer = scorer_cls(
        model,
        tokenizer,
        device=device,
        max_length=config.max_length,
        max_batch_tokens=config.max_batch_tokens,
        max_batch_size=config.max_batch_size,
        chunk_tokens=config.chunk_tokens,
        execution=_execution(config, scorer_cls, model, device, dtype),
        memory_budget_bytes=config.gpu_memory_budget_mib * 2**20 if config.gpu_memory_budget_mib else None,
        **options,
    )
    scorer.prepare()
    return scorer


def _load_model(folder, auto_model, dtype: torch.dtype, device: torch.device, config: EngineConfig):
    """The checkpoint on its device; with quantization fp8 its linear layers in E4M3, taken as they are
    from an FP8 checkpoint or quantized here from the checkpoint's own precision."""
    from rerank_engine import fp8

    stored = fp8.checkpoint_format(fp8.read_checkpoint_config(folder))
    if stored is not None:
        if config.quantization != "fp8":
            raise ValueError(f"{folder} holds FP8 weights ({stored.method}): serve it with quantization: fp8")
        return fp8.load_fp8_checkpoint(folder, auto_model, dtype, attn_implementation="sdpa").model.to(device).eval()
    model = auto_model.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa").eval()  # on the host
    if config.quantization == "fp8":
        # Layer by layer on the device: its memory holds the E4M3 weights and one layer in bf16, never the
        # whole bf16 model (on an H200 quantizing after a full bf16 load made the FP8 8B peak above bf16's).
        fp8.quantize_linears(model, skip=KEPT_HEADS[config.scorer], device=device)
    return model.to(device)


def _execution(config: EngineConfig, scorer_cls: type[Scorer], model, device: torch.device,
               dtype: torch.dtype) -> Execution:
    packable = scorer_cls.packable(model)
    if config.packed == "true" and not packable:
        raise ValueError(f"packed: true, but there is no packed forward for {model.config.model_type} models")
    packed = packable and (config.packed == "true" or (config.packed == "auto" and varlen_kernel_available(device, dtype)))
    if config.cuda_graphs and device.type != "cuda":
        log.info("cuda_graphs is on, but %s is not a CUDA device: running eagerly", device)
    needs_packed = [name for name, on in (("packed_graphs", config.packed_graphs), ("fusions", config.fusions),
                                          ("compile", config.compile), ("pipeline_pairs", config.pipeline_pairs))
                    if on]
    if needs_packed and not packed:
        log.info("%s apply to packed batches only, which are off here: not used", ", ".join(needs_packed))
    return Execution(packed=packed, cuda_graphs=config.cuda_graphs and device.type == "cuda",
                     packed_graphs=packed and config.packed_graphs and device.type == "cuda",
                     fusions=config.fusions if packed else (), compile=packed and config.compile,
                     pipeline_pairs=config.pipeline_pairs if packed else 0)
