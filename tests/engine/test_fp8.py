"""rerank_engine.fp8: the E4M3 recipe against hand-computed values and plain
quantize-dequantize math written here, the float32 product emulation against a
float64 product of the dequantized operands, `Fp8Linear` / `quantize_linears`
on the tiny models, and FP8 checkpoints in each format the loader reads,
written here from the formats' descriptions (transformers, vLLM,
compressed-tensors) and loaded back."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.fp8 import (
    Fp8Linear,
    Fp8Weight,
    fp8_linear,
    load_fp8_checkpoint,
    quantize_linears,
    quantize_per_token,
    quantize_weight,
)
from rerank_engine.fp8_recipe import FP8_DTYPE, quantize_with_scale
from rerank_engine.scoring import Pair
from tests import tiny_models
from tests.engine.samples import PANDA, PARIS

E4M3_MAX = 448.0  # 1.75 * 2^8, the largest finite E4M3 (fn) value: the OCP FP8 specification
HALF_STEP = 2.0**-4  # half of E4M3's relative step (3 mantissa bits): the largest relative rounding error
SUBNORMAL_HALF_STEP = 2.0**-10  # half of the subnormal step 2^-9 (in units of the scale)


def e4m3_error_bound(reference: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The largest rounding error of E4M3 under `scale`: half a step, relative above 2^-6 * scale, absolute below."""
    return reference.abs() * HALF_STEP + scale * SUBNORMAL_HALF_STEP


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, 1.0),
        (1.0625, 1.0),  # halfway between 1.0 (mantissa 000) and 1.125 (001): to the even one
        (1.1875, 1.25),  # halfway between 1.125 (001) and 1.25 (010): to the even one
        (1.1, 1.125),
        (-300.0, -288.0),  # steps of 32 between 256 and 448
        (448.0, 448.0),
        (460.0, 448.0),  # clamped, not NaN
        (-1e6, -448.0),
        (2.0**-9, 2.0**-9),  # the smallest subnormal
        (2.0**-10, 0.0),  # halfway between 0 and 2^-9: to the even one, 0
        (3 * 2.0**-10, 2.0**-8),  # halfway between 2^-9 (001) and 2^-8 (010)
        (0.0, 0.0),
    ],
)
def test_quantize_with_scale_rounds_to_nearest_even_and_saturates(value, expected):
    got = quantize_with_scale(torch.tensor([value]), torch.tensor(1.0))
    assert got.dtype == FP8_DTYPE
    assert got.float().item() == expected


def test_quantize_weight_scales_each_output_channel_by_its_largest_value():
    torch.manual_seed(0)
    weight = torch.randn(6, 40) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 300.0, 0.0])[:, None]
    fp8 = quantize_weight(weight)
    assert fp8.weight.dtype == FP8_DTYPE and fp8.weight.shape == (6, 40) and fp8.weight.is_contiguous()
    assert fp8.scale.dtype == torch.float32 and fp8.scale.shape == (6,)
    amax = weight.double().abs().amax(dim=1)
    torch.testing.assert_close(fp8.scale[:5].double(), amax[:5] / E4M3_MAX, rtol=1e-6, atol=0)
    # Each non-zero row's largest value lands on the top of the grid, and the rest within half a step.
    assert (fp8.weight[:5].float().abs().amax(dim=1) == E4M3_MAX).all()
    error = (fp8.dequantize() - weight).abs()
    assert (error <= e4m3_error_bound(weight, fp8.scale[:, None]) * (1 + 1e-6)).all()
    # An all-zero row keeps a finite positive scale and comes back as zeros.
    assert 0 < fp8.scale[5] < 1e-12 and (fp8.weight[5].float() == 0).all()


def test_fused_weights_quantize_like_their_parts():
    """Per-channel scales make q|k and gate|up fusion exact: concatenating quantized parts = quantizing the whole."""
    torch.manual_seed(1)
    parts = [torch.randn(8, 32), torch.randn(4, 32) * 5]
    fused = Fp8Weight.cat(quantize_weight(p) for p in parts)
    whole = quantize_weight(torch.cat(parts))
    assert torch.equal(fused.weight.view(torch.uint8), whole.weight.view(torch.uint8))
    assert torch.equal(fused.scale, whole.scale)


def test_fp8_weight_rejects_wrong_layouts():
    good = quantize_weight(torch.randn(4, 8))
    with pytest.raises(ValueError, match="contiguous 2-D"):
        Fp8Weight(good.weight.t(), good.scale)
    with pytest.raises(ValueError, match=r"float32 \[4\]"):
        Fp8Weight(good.weight, good.scale[:2])


def test_quantize_per_token_scales_each_row_of_any_leading_shape():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 50) * torch.logspace(-3, 3, 6).view(2, 3, 1)
    values, scale = quantize_per_token(x)
    assert values.shape == x.shape and values.dtype == FP8_DTYPE
    assert scale.shape == (2, 3, 1) and scale.dtype == torch.float32
    expected_scale = x.double().abs().amax(dim=-1, keepdim=True) / E4M3_MAX
    torch.testing.assert_close(scale.double(), expected_scale, rtol=1e-6, atol=0)
    assert ((values.float() * scale - x).abs() <= e4m3_error_bound(x, scale) * (1 + 1e-6)).all()


# ---------------------------------------------------------------------------------------------
# The product
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_bias", [False, True])
def test_fp8_linear_is_the_product_of_the_dequantized_operands(with_bias):
    torch.manual_seed(3)
    x_q, x_scale = quantize_per_token(torch.randn(9, 48))
    weight = quantize_weight(torch.randn(20, 48))
    bias = torch.randn(20) if with_bias else None
    expected = (x_q.double() * x_scale.double()) @ (weight.weight.double() * weight.scale.double()[:, None]).T
    if with_bias:
        expected = expected + bias.double()
    got = fp8_linear(x_q, x_scale, weight, bias, out_dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert fp8_linear(x_q, x_scale, weight, bias).dtype == torch.bfloat16  # the default, as _scaled_mm writes


def test_fp8_linear_names_what_is_wrong_with_its_inputs():
    x_q, x_scale = quantize_per_token(torch.randn(3, 16))
    weight = quantize_weight(torch.randn(8, 16))
    with pytest.raises(ValueError, match="x_q as"):
        fp8_linear(x_q.float(), x_scale, weight)
    with pytest.raises(ValueError, match="x_q as"):
        fp8_linear(x_q[:, :8], x_scale, weight)
    with pytest.raises(ValueError, match=r"x_scale as float32 \[3, 1\]"):
        fp8_linear(x_q, x_scale.view(3), weight)


def test_fp8_linear_module_stays_within_e4m3_error_of_the_linear():
    """Relative error of the whole output, ‖Δy‖ / ‖y‖: E4M3 rounds each operand within half a step
    (2^-4 relative), about 2^-4/√3 ≈ 0.036 RMS for values spread over a binade, so a product of two
    rounded operands is off by about √2 · 0.036 ≈ 0.05 RMS, and so is a sum of many such products
    with independent errors. Below 2^-4 passes; near zero would mean nothing was quantized."""
    torch.manual_seed(4)
    linear = nn.Linear(256, 192)
    x = torch.randn(64, 256)
    fp8 = Fp8Linear.from_linear(linear)
    with torch.no_grad():
        expected, got = linear(x), fp8(x)
    relative = ((got - expected).norm() / expected.norm()).item()
    assert 0.005 < relative < HALF_STEP
    assert got.shape == expected.shape and got.dtype == torch.float32


def test_fp8_linear_module_keeps_fp8_weights_through_dtype_changes():
    linear = nn.Linear(32, 16)
    fp8 = Fp8Linear.from_linear(linear)
    scale = fp8.weight_scale.clone()
    values = fp8.weight.view(torch.uint8).clone()
    fp8.to(torch.bfloat16)
    assert fp8.weight.dtype == FP8_DTYPE and torch.equal(fp8.weight.view(torch.uint8), values)
    assert fp8.weight_scale.dtype == torch.float32 and torch.equal(fp8.weight_scale, scale)
    assert fp8.bias.dtype == torch.bfloat16
    out = fp8(torch.randn(3, 5, 32, dtype=torch.bfloat16))
    assert out.shape == (3, 5, 16) and out.dtype == torch.bfloat16


def test_quantize_linears_replaces_linear_layers_and_keeps_the_rest(qwen_dir):
    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    embedding_before = model.model.embed_tokens.weight.clone()
    swapped = quantize_linears(model, skip=("lm_head",))
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert len(swapped) == model.config.num_hidden_layers * len(projections)
    for index, layer in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert isinstance(getattr(layer.self_attn, name), Fp8Linear)
            assert swapped[f"model.layers.{index}.self_attn.{name}"] is getattr(layer.self_attn, name)
        for name in ("gate_proj", "up_proj", "down_proj"):
            assert isinstance(getattr(layer.mlp, name), Fp8Linear)
        assert type(layer.input_layernorm).__name__ == "Qwen3RMSNorm"
    assert type(model.lm_head) is nn.Linear
    assert type(model.model.embed_tokens) is nn.Embedding
    assert torch.equal(model.model.embed_tokens.weight, embedding_before)
    with pytest.raises(ValueError, match="submodules"):
        quantize_linears(nn.Linear(4, 4))


def test_quantize_linears_frees_each_full_precision_layer_before_the_next(qwen_dir, monkeypatch):
    # With a device, each layer is moved there in full precision, then quantized: a replaced layer that stays
    # referenced until the loop ends means the device holds the whole full-precision model at once.
    import weakref

    model = AutoModelForCausalLM.from_pretrained(qwen_dir, dtype=torch.float32)
    replaced: list[weakref.ref] = []
    alive_at_each_step: list[int] = []
    original = Fp8Linear.from_linear.__func__

    def recording(cls, linear, fast_accum=False):
        alive_at_each_step.append(sum(ref() is not None for ref in replaced))
        replaced.append(weakref.ref(linear))
        return original(cls, linear, fast_accum)

    monkeypatch.setattr(Fp8Linear, "from_linear", classmethod(recording))
    quantize_linears(model, skip=("lm_head",), device=torch.device("cpu"))
    assert len(alive_at_each_step) == model.config.num_hidden_layers * 7
    assert max(alive_at_each_step) == 0, alive_at_each_step


def test_fp8_tiny_qwen3_scores_stay_within_the_bf16_deviation_scaled_to_e4m3(qwen_dir):
    """The tiny Qwen3 with every projection in FP8, against float32, next to the engine's bf16.

    Tolerance: E4M3 keeps 3 mantissa bits where bf16 keeps 7, so its rounding steps are 2^4 = 16
    times bf16's; both operands of each product are rounded, hence up to 2 x 16 = 32 times the
    log-odds deviation that bf16 causes on the same pairs. The tiny model (initializer range 0.4)
    amplifies rounding (bf16 alone moves its log-odds by about 1.5%), which is why the bound is
    relative to bf16 rather than absolute. A wiring error (a transposed weight, a scale on the wrong
    axis, a skipped layer) moves scores by their whole spread and fails every bound below.
    """
    documents = [PARIS, PANDA, "Gravity pulls masses together.", "Bamboo is a grass.", "Berlin is in Germany.",
                 "The Seine flows through Paris.", "Pandas eat bamboo.", "A recipe for bread.", PARIS * 3]
    pairs = [Pair(q, d) for q in ("capital of France", "what do pandas eat?") for d in documents]

    def scores(dtype: str, fp8: bool = False):
        config = EngineConfig(scorer="qwen3_reranker", weights_path=str(qwen_dir), max_length=8192, dtype=dtype)
        scorer = load_scorer(config, torch.device("cpu"))
        if fp8:
            quantize_linears(scorer.model, skip=("lm_head",))
            assert isinstance(scorer.model.model.layers[0].mlp.down_proj, Fp8Linear)
        result = scorer.score(pairs)
        return result.score.astype(np.float64), result.raw_score.astype(np.float64)

    reference_p, reference_log_odds = scores("float32")
    _, bf16_log_odds = scores("bfloat16")
    fp8_p, fp8_log_odds = scores("float32", fp8=True)
    bf16_deviation = np.abs(bf16_log_odds - reference_log_odds).max()
    fp8_deviation = np.abs(fp8_log_odds - reference_log_odds).max()
    assert bf16_deviation < fp8_deviation <= 32 * bf16_deviation
    from scipy.stats import spearmanr

    assert spearmanr(reference_p, fp8_p).statistic > 0.8


# ---------------------------------------------------------------------------------------------
# FP8 checkpoints, written here in each format and loaded back
# ---------------------------------------------------------------------------------------------

BLOCK = (16, 24)
"""Block shape of the block-wise checkpoints: smaller than Qwen's 128 x 128 so the tiny model's
32 x 32 / 64 x 32 weights span several blocks, including ragged edge blocks (32 = 24 + 8)."""


def _blockwise_scale(weight: torch.Tensor, block=BLOCK) -> torch.Tensor:
    rows, columns = weight.shape
    scale = torch.empty(math.ceil(rows / block[0]), math.ceil(columns / block[1]))
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            tile = weight[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]]
            scale[i, j] = tile.abs().max() / E4M3_MAX
    return scale


def _expand_blocks(scale: torch.Tensor, shape, block=BLOCK) -> torch.Tensor:
    rows = torch.arange(shape[0]) // block[0]
    columns = torch.arange(shape[1]) // block[1]
    return scale[rows][:, columns]


def _e4m3(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (weight / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)


def _quantized(key: str) -> bool:
    return key.endswith("_proj.weight")  # every projection of every layer; not embed_tokens, norms, lm_head


FORMATS = {
    "compressed-tensors-channel": {
        "config": {"quant_method": "compressed-tensors", "format": "float-quantized",
                   "quantization_status": "compressed",
                   "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                       "num_bits": 8, "type": "float", "strategy": "channel", "symmetric": True, "dynamic": False},
                       "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}}},
                   "ignore": ["lm_head"]},
        "scale": lambda w: w.abs().amax(dim=1, keepdim=True) / E4M3_MAX,  # [N, 1]
        "scale_name": "weight_scale",
    },
    "compressed-tensors-tensor": {
        "config": {"quant_method": "compressed-tensors", "format": "float-quantized",
                   "quantization_status": "compressed",
                   "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                       "num_bits": 8, "type": "float", "strategy": "tensor", "symmetric": True, "dynamic": False},
                       "input_activations": {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False}}},
                   "ignore": ["lm_head"]},
        "scale": lambda w: (w.abs().max() / E4M3_MAX).reshape(1),  # [1]
        "scale_name": "weight_scale",
        "input_scale": True,
    },
    "compressed-tensors-block": {
        "config": {"quant_method": "compressed-tensors", "format": "float-quantized",
                   "quantization_status": "compressed",
                   "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                       "num_bits": 8, "type": "float", "strategy": "block", "block_structure": list(BLOCK),
                       "symmetric": True, "dynamic": False},
                       "input_activations": {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128,
                                             "dynamic": True}}},
                   "ignore": ["lm_head"]},
        "scale": _blockwise_scale,
        "scale_name": "weight_scale",
    },
    "hf-fine-grained-fp8": {  # Qwen's official -FP8 releases, block 128 x 128 there
        "config": {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                   "weight_block_size": list(BLOCK)},
        "scale": _blockwise_scale,
        "scale_name": "weight_scale_inv",
        "scale_dtype": torch.bfloat16,  # some releases store the block scales in bf16
    },
    "vllm-fp8-per-tensor": {  # AutoFP8 / vLLM Fp8Config checkpoints
        "config": {"quant_method": "fp8", "activation_scheme": "static"},
        "scale": lambda w: w.abs().max() / E4M3_MAX,  # a 0-d tensor
        "scale_name": "weight_scale",
        "input_scale": True,
    },
    "fbgemm-fp8": {
        "config": {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0},
        "scale": lambda w: w.abs().amax(dim=1, keepdim=True) / E4M3_MAX,  # [N, 1]
        "scale_name": "weight_scale",
    },
}


def write_fp8_checkpoint(source, target, name: str, shards: int = 1):
    """The tiny Qwen3 in `source` saved as an FP8 checkpoint of format `name`; returns what it stored."""
    spec = FORMATS[name]
    target.mkdir(parents=True)
    stored = {}
    for key, tensor in load_file(source / "model.safetensors").items():
        if _quantized(key):
            scale = spec["scale"](tensor).to(spec.get("scale_dtype", torch.float32))
            per_row_or_tensor = scale.dim() < 2 or scale.shape[1] == 1
            dense_scale = scale.float() if per_row_or_tensor else _expand_blocks(scale.float(), tensor.shape)
            stored[key] = _e4m3(tensor, dense_scale).contiguous()
            stored[key.replace(".weight", "." + spec["scale_name"])] = scale.contiguous()
            if spec.get("input_scale"):
                stored[key.replace(".weight", ".input_scale")] = torch.tensor(0.02)
        else:
            stored[key] = tensor.to(torch.bfloat16).contiguous()
    keys = sorted(stored)
    if shards == 1:
        save_file(stored, target / "model.safetensors", metadata={"format": "pt"})
    else:
        weight_map = {}
        for index in range(shards):
            file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: stored[k] for k in keys[index::shards]}
            save_file(part, target / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        (target / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = spec["config"]
    (target / "config.json").write_text(json.dumps(config))
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / file, target / file)
    return stored


@pytest.fixture(scope="module")
def tiny_qwen3_fp32(tmp_path_factory):
    return tiny_models.build_tiny_qwen3(tmp_path_factory.mktemp("fp8-source") / "qwen3", seed=11)


@pytest.mark.parametrize(("name", "shards"), [(name, 1) for name in FORMATS] + [("compressed-tensors-channel", 3)])
def test_fp8_checkpoint_loads_what_the_format_encodes(tiny_qwen3_fp32, tmp_path, name, shards):
    spec = FORMATS[name]
    stored = write_fp8_checkpoint(tiny_qwen3_fp32, tmp_path / name, name, shards)
    loaded = load_fp8_checkpoint(tmp_path / name, AutoModelForCausalLM)
    quantized = sorted(k[: -len(".weight")] for k in stored if _quantized(k))
    assert sorted(loaded.weights) == quantized
    blockwise = "block" in json.dumps(spec["config"])
    for module in quantized:
        values, scale = stored[f"{module}.weight"], stored[f"{module}.{spec['scale_name']}"].float()
        got = loaded.weights[module]
        assert got.weight.dtype == FP8_DTYPE and got.scale.dtype == torch.float32
        if not blockwise:
            # Per-channel and per-tensor scales are used as stored: the same bytes, the scale per row.
            assert torch.equal(got.weight.view(torch.uint8), values.view(torch.uint8)), module
            assert torch.equal(got.scale, scale.reshape(-1).expand(values.shape[0])), module
        else:
            # Block scales are re-expressed per channel: within half a step of the per-channel grid.
            encoded = values.float() * _expand_blocks(scale, values.shape)
            row_scale = encoded.abs().amax(dim=1) / E4M3_MAX
            torch.testing.assert_close(got.scale, row_scale, rtol=1e-6, atol=0)
            error = (got.dequantize() - encoded).abs()
            assert (error <= e4m3_error_bound(encoded, row_scale[:, None]) * (1 + 1e-6)).all(), module
        layer = loaded.model.get_submodule(module)
        assert isinstance(layer, Fp8Linear) and layer.weight is got.weight
    # Everything else is the checkpoint's bf16 tensors, as stored; the yes/no head stays bf16.
    state = loaded.model.state_dict()
    for key, tensor in stored.items():
        if key.endswith((".weight_scale", ".weight_scale_inv", ".input_scale")) or _quantized(key):
            continue
        assert state[key].dtype == torch.bfloat16 and torch.equal(state[key], tensor), key
    assert type(loaded.model.lm_head) is nn.Linear and loaded.model.lm_head.weight.dtype == torch.bfloat16
    assert not hasattr(loaded.model.config, "quantization_config")
    # And the model runs: its logits follow those of the same weights dequantized, in float32.
    reference = AutoModelForCausalLM.from_pretrained(tiny_qwen3_fp32, dtype=torch.float32)
    for module, weight in loaded.weights.items():
        reference.get_submodule(module).weight.data = weight.dequantize()
    with torch.no_grad():
        reference.model.embed_tokens.weight.copy_(loaded.model.model.embed_tokens.weight.float())
        reference.lm_head.weight.copy_(loaded.model.lm_head.weight.float())
    ids = torch.tensor([[9707, 11, 1879, 374, 264, 1273, 315, 279, 34722, 13]])
    with torch.no_grad():
        got_logits = loaded.model(ids).logits[0, -1].float()
        want_logits = reference(ids).logits[0, -1]
    assert torch.isfinite(got_logits).all()
    assert torch.corrcoef(torch.stack([got_logits, want_logits]))[0, 1] > 0.98


def test_fp8_checkpoint_of_a_model_with_a_head_loads_into_the_bare_model(tiny_qwen3_fp32, tmp_path):
    """As transformers does, module names lose the base-model prefix ("model.") in a model without the head."""
    from transformers import AutoModel

    write_fp8_checkpoint(tiny_qwen3_fp32, tmp_path / "ckpt", "compressed-tensors-channel")
    loaded = load_fp8_checkpoint(tmp_path / "ckpt", AutoModel)
    assert type(loaded.model).__name__ == "Qwen3Model"
    assert "layers.0.self_attn.q_proj" in loaded.weights and len(loaded.weights) == 2 * 7
    assert isinstance(loaded.model.layers[1].mlp.up_proj, Fp8Linear)


def test_fp8_checkpoint_errors_name_the_problem(tiny_qwen3_fp32, tmp_path):
    folder = tmp_path / "ckpt"
    write_fp8_checkpoint(tiny_qwen3_fp32, folder, "compressed-tensors-channel")
    config = json.loads((folder / "config.json").read_text())

    def with_quantization(quantization):
        (folder / "config.json").write_text(json.dumps({**config, "quantization_config": quantization}))
        return folder

    int8 = json.loads(json.dumps(FORMATS["compressed-tensors-channel"]["config"]))
    int8["config_groups"]["group_0"]["weights"].update(type="int")
    with pytest.raises(ValueError, match="8-bit int weights; only 8-bit float"):
        load_fp8_checkpoint(with_quantization(int8), AutoModelForCausalLM)
    with pytest.raises(ValueError, match="'awq' is not an FP8 format"):
        load_fp8_checkpoint(with_quantization({"quant_method": "awq", "bits": 4}), AutoModelForCausalLM)
    # Per-channel scales under a config that declares block scales: the shapes cannot match.
    with pytest.raises(ValueError, match="fits none of the compressed-tensors checkpoint's granularities"):
        load_fp8_checkpoint(with_quantization(FORMATS["compressed-tensors-block"]["config"]), AutoModelForCausalLM)
    # A quantized weight whose scale is missing.
    tensors = load_file(folder / "model.safetensors")
    save_file({k.replace(".weight_scale", ".other_scale"): v for k, v in tensors.items()}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="is FP8 but the checkpoint has no weight_scale for it"):
        load_fp8_checkpoint(with_quantization(FORMATS["compressed-tensors-channel"]["config"]), AutoModelForCausalLM)
    (folder / "config.json").write_text(json.dumps(config | {"quantization_config": None}))
    with pytest.raises(ValueError, match="declares no quantization_config"):
        load_fp8_checkpoint(folder, AutoModelForCausalLM)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs FP8 tensor cores (compute capability 8.9 or more)")
@pytest.mark.parametrize("fast_accum", [False, True])
def test_scaled_mm_product_equals_the_float64_product_on_fp8_tensor_cores(fast_accum):
    """The torch._scaled_mm path (row-wise scales, bf16 out) against float64 on the same quantized operands:
    within bf16's output rounding plus float32 accumulation (fast accumulation: Hopper's reduced-precision sums)."""
    from rerank_engine.fp8 import scaled_mm_available

    device = torch.device("cuda")
    assert scaled_mm_available(device)
    torch.manual_seed(5)
    x_q, x_scale = quantize_per_token(torch.randn(300, 2560, device=device, dtype=torch.bfloat16))
    weight = quantize_weight(torch.randn(1024, 2560, device=device))
    bias = torch.randn(1024, device=device, dtype=torch.bfloat16)
    got = fp8_linear(x_q, x_scale, weight, bias, fast_accum=fast_accum)
    expected = (x_q.double() * x_scale.double()) @ (weight.weight.double() * weight.scale.double()[:, None]).T
    expected = expected + bias.double()
    assert got.dtype == torch.bfloat16 and got.shape == (300, 1024)
    relative = ((got.double() - expected).norm() / expected.norm()).item()
    # bf16 output rounding alone is 2^-8/√3 ≈ 0.0023 RMS relative; fast accumulation may add to it.
    assert relative < (1e-2 if fast_accum else 4e-3)
    emulated = fp8_linear(x_q.cpu(), x_scale.cpu(), weight.to("cpu"), bias.cpu(), out_dtype=torch.float32)
    scale = emulated.abs().mean().item()  # ~ 40: outputs are sums of 2,560 products of unit-variance values
    torch.testing.assert_close(got.cpu().float(), emulated, rtol=2**-7, atol=(1e-2 if fast_accum else 2e-3) * scale)
