"""rerank_engine.kernels: each PyTorch fallback against math written here from
the model code (transformers' Qwen3RMSNorm, SiLU, rotary embedding) and plain
quantize-dequantize; then each Triton kernel against its fallback, under
Triton's CPU interpreter in a subprocess (TRITON_INTERPRET=1 must be set before
the kernels are built) and, on a machine with a CUDA GPU, natively."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm, apply_rotary_pos_emb

from rerank_engine import kernels
from rerank_engine.fp8_recipe import FP8_DTYPE
from tests.engine.kernel_cases import CASES, case_inputs, run_cases
from tests.stack import REPO_ROOT

E4M3_MAX = 448.0
HALF_STEP = 2.0**-4  # E4M3: 3 mantissa bits, so rounding is within 2^-4 relative
SUBNORMAL_STEP = 2.0**-9  # E4M3's smallest step, in units of the scale
BF16_HALF_STEP = 2.0**-8  # bf16: 7 mantissa bits
FP16_HALF_STEP = 2.0**-11  # fp16: 10 mantissa bits


def assert_quantized(values, scale, reference):
    """`values` [M, K] E4M3 and `scale` [M, 1] are the per-token quantization of float `reference`:
    the scale is the row's largest magnitude over 448, and every value within half a step."""
    reference = reference.double()
    assert values.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == (reference.shape[0], 1)
    amax = reference.abs().amax(dim=-1, keepdim=True)
    torch.testing.assert_close(scale.double(), amax.clamp(min=1e-12) / E4M3_MAX, rtol=2e-6, atol=0)
    bound = reference.abs() * HALF_STEP + scale.double() * SUBNORMAL_STEP / 2
    # 1e-5: `reference` is float64, the code under test computes in float32.
    assert ((values.double() * scale.double() - reference).abs() <= bound * (1 + 1e-5) + 1e-30).all()


# ---------------------------------------------------------------------------------------------
# Fallbacks against the model's own math
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_quant_fallback_is_qwen3_rms_norm_quantized(with_residual):
    torch.manual_seed(0)
    x, residual = torch.randn(6, 96) * 3, torch.randn(6, 96) * 10
    norm = Qwen3RMSNorm(96, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(96) + 0.5)
    out = kernels.rms_norm_quant_torch(x, norm.weight.detach(), 1e-6, residual if with_residual else None)
    stream = x + residual if with_residual else x
    with torch.no_grad():
        normalized = norm(stream.double().float())
    assert_quantized(out[0], out[1], normalized)
    if with_residual:
        assert torch.equal(out[2], stream)
    # On the CPU, without the interpreter, the public function is the fallback.
    assert not kernels.available(torch.device("cpu"))
    public = kernels.rms_norm_quant(x, norm.weight.detach(), 1e-6, residual if with_residual else None)
    for a, b in zip(public, out):
        bits = (lambda t: t.view(torch.uint8) if t.dtype == FP8_DTYPE else t)
        assert torch.equal(bits(a), bits(b))


def test_rms_norm_quant_fallback_rounds_the_residual_stream_to_its_dtype():
    torch.manual_seed(1)
    x, residual = torch.randn(4, 64, dtype=torch.bfloat16), torch.randn(4, 64, dtype=torch.bfloat16) * 100
    weight = torch.ones(64, dtype=torch.bfloat16)
    _, _, stream = kernels.rms_norm_quant_torch(x, weight, 1e-6, residual)
    assert stream.dtype == torch.bfloat16 and torch.equal(stream, x + residual)


def test_silu_mul_quant_fallback_is_silu_times_up_quantized():
    torch.manual_seed(2)
    gate_up = torch.randn(5, 2 * 80) * 4
    gate, up = gate_up.double().chunk(2, dim=-1)
    values, scale = kernels.silu_mul_quant_torch(gate_up)
    assert values.shape == (5, 80)
    assert_quantized(values, scale, F.silu(gate) * up)


def test_silu_mul_fallback_rounds_once_to_the_input_dtype():
    torch.manual_seed(3)
    gate_up = (torch.randn(5, 2 * 80) * 4).to(torch.bfloat16)
    gate, up = gate_up.double().chunk(2, dim=-1)
    expected = F.silu(gate) * up
    got = kernels.silu_mul_torch(gate_up)
    assert got.dtype == torch.bfloat16 and got.shape == (5, 80)
    assert ((got.double() - expected).abs() <= expected.abs() * BF16_HALF_STEP * (1 + 1e-5)).all()


def test_per_token_quant_fallback_handles_zero_and_extreme_rows():
    x = torch.stack([torch.zeros(16), torch.linspace(-3e4, 5e4, 16), torch.logspace(-20, -10, 16)])
    values, scale = kernels.per_token_quant_torch(x)
    assert_quantized(values, scale, x)
    assert (values[0].float() == 0).all() and torch.isfinite(scale).all()
    assert values[1].float().max() == E4M3_MAX and torch.isfinite(values.float()).all()


def _qwen3_rotary(tokens: int, head_dim: int, theta: float = 1_000_000.0):
    """cos/sin as Qwen3RotaryEmbedding builds them (default rope): angles = position * theta^(-2i/d), twice."""
    from transformers import Qwen3Config
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    config = Qwen3Config(head_dim=head_dim, rope_theta=theta, max_position_embeddings=4096)
    rotary = Qwen3RotaryEmbedding(config)
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), torch.arange(tokens)[None])
    return cos[0], sin[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qk_norm_rope_fallback_is_qwen3_q_k_norm_then_rotary(dtype):
    torch.manual_seed(4)
    tokens, q_heads, kv_heads, head_dim = 9, 4, 2, 16
    q_norm, k_norm = Qwen3RMSNorm(head_dim, eps=1e-6), Qwen3RMSNorm(head_dim, eps=1e-6)
    with torch.no_grad():
        q_norm.weight.copy_(torch.rand(head_dim) + 0.5)
        k_norm.weight.copy_(torch.rand(head_dim) + 0.5)
    qk = (torch.randn(tokens, q_heads + kv_heads, head_dim) * 2).to(dtype)
    cos, sin = _qwen3_rotary(tokens, head_dim)
    # Qwen3Attention: norm per head, then apply_rotary_pos_emb on [batch, heads, tokens, head_dim].
    with torch.no_grad():
        q = q_norm(qk[:, :q_heads].float()).transpose(0, 1)[None]
        k = k_norm(qk[:, q_heads:].float()).transpose(0, 1)[None]
        q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    expected = torch.cat([q[0], k[0]]).transpose(0, 1)
    weight = torch.cat([q_norm.weight.detach().expand(q_heads, -1), k_norm.weight.detach().expand(kv_heads, -1)])
    got = kernels.qk_norm_rope_torch(qk, weight, cos, sin, 1e-6)
    assert got.dtype == dtype and got.shape == qk.shape
    tolerance = 1e-5 if dtype == torch.float32 else 2 * BF16_HALF_STEP
    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)


def _xlm_roberta_config(hidden=64):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=4 * hidden, max_position_embeddings=40, type_vocab_size=1,
                            layer_norm_eps=1e-5, pad_token_id=1)


def test_add_layer_norm_fallback_is_xlm_roberta_output_block():
    """XLMRobertaSelfOutput: LayerNorm(dense(hidden) + input), the dense layer's bias passed apart."""
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaSelfOutput

    torch.manual_seed(5)
    block = XLMRobertaSelfOutput(_xlm_roberta_config()).eval()
    with torch.no_grad():
        block.LayerNorm.weight.copy_(torch.rand(64) + 0.5)
        block.LayerNorm.bias.copy_(torch.randn(64) * 0.1)
    hidden, stream = torch.randn(7, 64), torch.randn(7, 64) * 3
    with torch.no_grad():
        want = block(hidden, stream)
        y = hidden @ block.dense.weight.t()
    got = kernels.add_layer_norm_torch(y, stream, block.LayerNorm.weight, block.LayerNorm.bias,
                                       block.LayerNorm.eps, bias=block.dense.bias)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not kernels.available(torch.device("cpu"), fp8=False)
    public = kernels.add_layer_norm(y, stream, block.LayerNorm.weight, block.LayerNorm.bias, block.LayerNorm.eps,
                                    bias=block.dense.bias)
    assert torch.equal(public, got)


def test_embed_layer_norm_fallback_is_xlm_roberta_embeddings():
    from transformers.models.xlm_roberta.modeling_xlm_roberta import XLMRobertaEmbeddings

    torch.manual_seed(6)
    embeddings = XLMRobertaEmbeddings(_xlm_roberta_config()).eval()
    ids = torch.tensor([[0, 7, 9, 12, 2, 2, 30, 2]])
    positions = torch.arange(8)[None] + 2  # what the model derives from ids without padding: from pad_token_id + 1
    with torch.no_grad():
        want = embeddings(input_ids=ids, position_ids=positions)[0]
    got = kernels.embed_layer_norm_torch(ids[0], positions[0], embeddings.word_embeddings.weight,
                                         embeddings.position_embeddings.weight,
                                         embeddings.token_type_embeddings.weight[0], embeddings.LayerNorm.weight,
                                         embeddings.LayerNorm.bias, embeddings.LayerNorm.eps)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kernel_functions_name_bad_inputs():
    with pytest.raises(ValueError, match="contiguous columns"):
        kernels.per_token_quant(torch.randn(8, 4).t())
    with pytest.raises(ValueError, match=r"weight must be \[8\]"):
        kernels.rms_norm_quant(torch.randn(3, 8), torch.ones(4), 1e-6)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        kernels.rms_norm_quant(torch.randn(3, 8), torch.ones(8), 1e-6, torch.randn(2, 8))
    with pytest.raises(ValueError, match="halves of equal width"):
        kernels.silu_mul(torch.randn(3, 7))
    with pytest.raises(ValueError, match="even head_dim"):
        kernels.qk_norm_rope(torch.randn(2, 3, 5), torch.ones(3, 5), torch.ones(2, 5), torch.ones(2, 5), 1e-6)
    with pytest.raises(ValueError, match="is not one of one_pass"):
        kernels.silu_mul_quant(torch.randn(3, 8), method="three_pass")
    with pytest.raises(ValueError, match=r"bias must be \[8\]"):
        kernels.add_layer_norm(torch.randn(3, 8), torch.randn(3, 8), torch.ones(8), torch.zeros(8), 1e-5, torch.ones(4))
    with pytest.raises(ValueError, match=r"norm_weight must be \[3, 4\]"):
        kernels.qk_norm_rope(torch.randn(2, 3, 4), torch.ones(2, 4), torch.ones(2, 4), torch.ones(2, 4), 1e-6)


# ---------------------------------------------------------------------------------------------
# Triton kernels against their fallbacks
# ---------------------------------------------------------------------------------------------

BACKENDS = ["interpreter", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(scope="module")
def kernel_results(tmp_path_factory):
    """{backend: results of tests.engine.kernel_cases.run_cases}, computed on first use."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (the test extra pins it)")
    cache = {}

    def get(backend: str):
        if backend not in cache:
            if backend == "cuda":
                cache[backend] = run_cases(torch.device("cuda"))
            else:
                out = tmp_path_factory.mktemp("interpreter") / "results.pt"
                env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO_ROOT)}
                run = subprocess.run([sys.executable, "-m", "tests.engine.kernel_cases", str(out)], cwd=REPO_ROOT,
                                     env=env, capture_output=True, text=True, timeout=600)
                assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
                cache[backend] = torch.load(out, weights_only=False)
        return cache[backend]

    return get


def _assert_fp8_match(got_values, got_scale, want_values, want_scale, name):
    torch.testing.assert_close(got_scale, want_scale, rtol=2e-6, atol=0, msg=name)
    same = got_values.view(torch.uint8) == want_values.view(torch.uint8)
    # Reductions in another order can move a value across a rounding boundary: then by one step at most.
    got, want = got_values.double() * got_scale.double(), want_values.double() * want_scale.double()
    one_step = want.abs() * 2 * HALF_STEP + want_scale.double() * SUBNORMAL_STEP
    assert ((got - want).abs() <= one_step * (1 + 1e-5)).all(), name
    assert same.double().mean() >= 0.999, f"{name}: {(~same).sum().item()} of {same.numel()} values differ"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_triton_kernel_equals_its_fallback(kernel_results, backend, name):
    result = kernel_results(backend)[name]
    inputs = result["inputs"]
    assert all(torch.equal(a, b) for a, b in zip(inputs.values(), case_inputs(name).values())
               if isinstance(a, torch.Tensor)), "the subprocess built other inputs"
    case = CASES[name]
    want = getattr(kernels, case.kernel + "_torch")(**inputs)
    want = want if isinstance(want, tuple) else (want,)
    got = result["outputs"]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
    if case.kernel in ("rms_norm_quant", "silu_mul_quant", "per_token_quant"):
        _assert_fp8_match(got[0], got[1], want[0], want[1], name)
        if len(got) == 3:
            assert torch.equal(got[2], want[2]), f"{name}: residual stream"
    else:
        tolerance = {torch.float32: 1e-5, torch.float16: 2 * FP16_HALF_STEP}.get(want[0].dtype, 2 * BF16_HALF_STEP)
        torch.testing.assert_close(got[0].float(), want[0].float(), rtol=tolerance, atol=tolerance, msg=name)
        if want[0].dtype in (torch.bfloat16, torch.float16):
            # One rounding of nearly equal float32 values: identical but for rare neighbours (truncation: half differ).
            assert (got[0] == want[0]).double().mean() >= 0.99, name
    if "special-rows" in name:
        # Scale exactly 1: the kernel's FP8 conversion met every E4M3 value and tie; all bit for bit.
        assert got[1][2].item() == 1.0
        assert torch.equal(got[0][2].view(torch.uint8), want[0][2].view(torch.uint8))


def test_the_recipe_is_imported_one_way():
    """fp8_recipe imports no other engine module, the kernels never import the FP8 layers' module, and the
    FP8 layers' module takes its constants from the recipe: no import circle between the three."""
    code = ("import sys; import rerank_engine.kernels; "
            "assert 'rerank_engine.fp8' not in sys.modules, 'kernels imported fp8'; "
            "import rerank_engine.fp8 as f, rerank_engine.fp8_recipe as r; "
            "assert f.FP8_DTYPE is r.FP8_DTYPE and f.quantize_rows is r.quantize_rows")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    source = (REPO_ROOT / "rerank_engine" / "fp8_recipe.py").read_text()
    assert "from rerank_engine" not in source and "import rerank_engine" not in source
