"""quantization: fp8 through the engine, on CPU (the kernels' PyTorch fallbacks
and the float32 emulation of the FP8 product): the packed Qwen3 path with its
fused quantizing kernels scores like the padded path with per-layer
quantization, both stay near the float32 model, an FP8 checkpoint loads as it
is, and the setting is validated. Speed is measured on a GPU
(bench.rerank_bench, bench.fp8_fidelity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.fp8 import Fp8Linear
from rerank_engine.pairs import Pair
from tests.engine.test_fp8 import tiny_qwen3_fp32, write_fp8_checkpoint  # noqa: F401 (fixture)
from tests.engine.test_packed import QWEN_PAIRS

pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored when `padding`=`True`")


@pytest.fixture(scope="module")
def fp8_packed(make_scorer, qwen_dir):
    return make_scorer("qwen3_reranker", qwen_dir, max_length=8192, packed="true", quantization="fp8")


def test_the_packed_fp8_path_scores_like_the_padded_one(make_scorer, qwen_dir, fp8_packed):
    padded = make_scorer("qwen3_reranker", qwen_dir, max_length=8192, packed="false", quantization="fp8")
    assert fp8_packed.packed is not None and padded.packed is None
    assert isinstance(padded.model.model.layers[0].mlp.down_proj, Fp8Linear)
    got, want = fp8_packed.score(QWEN_PAIRS), padded.score(QWEN_PAIRS)
    # The same recipe; only where each activation is quantized from (a fused kernel's float32 value,
    # or the layer's input) can move a value across an E4M3 rounding boundary.
    np.testing.assert_allclose(got.raw_score, want.raw_score, rtol=0, atol=1e-3)  # 1.3e-5 seen
    assert got.num_tokens.tolist() == want.num_tokens.tolist()


def test_fp8_stays_near_the_float32_model(qwen, fp8_packed):
    exact, got = qwen.score(QWEN_PAIRS), fp8_packed.score(QWEN_PAIRS)
    spread = np.ptp(exact.raw_score)
    assert spread > 0.1, "the tiny model must tell pairs apart for the comparison to mean anything"
    assert np.abs(got.raw_score - exact.raw_score).max() < 0.1 * spread
    assert spearmanr(got.raw_score, exact.raw_score).statistic > 0.95


def test_embeddings_norms_and_the_answer_rows_stay_unquantized(fp8_packed):
    model = fp8_packed.model
    assert model.model.embed_tokens.weight.dtype == torch.float32 and model.lm_head.weight.dtype == torch.float32
    assert model.model.norm.weight.dtype == torch.float32 and fp8_packed.answer_rows.dtype == torch.float32
    assert all(isinstance(m, Fp8Linear) for layer in model.model.layers for m in
               (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.down_proj))


def test_an_fp8_checkpoint_is_served_as_it_is_and_only_with_quantization_fp8(tiny_qwen3_fp32, tmp_path):
    folder = tmp_path / "fp8-qwen"
    stored = write_fp8_checkpoint(tiny_qwen3_fp32, folder, "compressed-tensors-channel")
    scorer = load_scorer(EngineConfig(scorer="qwen3_reranker", weights_path=str(folder), max_length=8192,
                                      packed="true", quantization="fp8"), torch.device("cpu"))
    key = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(scorer.model.get_submodule(key[: -len(".weight")]).weight.view(torch.uint8),
                       stored[key].view(torch.uint8)), "the stored E4M3 values, not a re-quantization"
    assert np.isfinite(scorer.score([Pair("q", "d")]).score).all()
    with pytest.raises(ValueError, match="holds FP8 weights .*quantization: fp8"):
        load_scorer(EngineConfig(scorer="qwen3_reranker", weights_path=str(folder), max_length=8192),
                    torch.device("cpu"))


def test_the_quantization_setting():
    base = {"scorer": "qwen3_reranker", "weights_path": "models/x"}
    assert EngineConfig.from_parameters(base).quantization == "none"
    assert EngineConfig.from_parameters({**base, "quantization": "fp8"}).quantization == "fp8"
    with pytest.raises(ValueError, match="'quantization' must be one of none, fp8, got 'int4'"):
        EngineConfig.from_parameters({**base, "quantization": "int4"})
