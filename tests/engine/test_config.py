"""A model's `config.pbtxt` parameters to an `EngineConfig`, and finding its
weights folder: validation messages, dtype choice, `models/<folder>` lookup
inside `$RERANKER_MODELS_DIR`, and the error for missing weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rerank_engine.contract import MODELS_DIR_ENV
from rerank_engine.engine import EngineConfig, load_scorer
from rerank_engine.weights import WeightsNotFoundError, require_weights, resolve_weights_path

BASE = {"scorer": "cross_encoder", "weights_path": "models/bge-reranker-base"}
QWEN = {"scorer": "qwen3_reranker", "weights_path": "models/Qwen3-Reranker-4B"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weights_path": "models/x"}, r"parameter 'scorer' is required"),
        ({"scorer": "", "weights_path": "models/x"}, r"parameter 'scorer' is required"),
        ({"scorer": "magic", "weights_path": "models/x"}, r"unknown scorer 'magic'; expected one of cross_encoder"),
        ({"scorer": "cross_encoder"}, r"parameter 'weights_path' is required"),
        ({**BASE, "dtype": "int4"}, r"dtype 'int4' is not one of auto, float32, float16, bfloat16"),
        ({**BASE, "dtype": "fp16"}, r"dtype 'fp16'"),
        ({**BASE, "max_length": "-5"}, r"'max_length' must be a positive integer, got '-5'"),
        ({**BASE, "max_length": "0"}, r"'max_length' must be a positive integer, got '0'"),
        ({**BASE, "max_length": "lots"}, r"'max_length' must be a positive integer, got 'lots'"),
        ({**BASE, "max_length": "512.0"}, r"'max_length' must be a positive integer"),
        ({**BASE, "max_batch_tokens": "1e4"}, r"'max_batch_tokens' must be a positive integer"),
        ({**QWEN, "prefix_reuse": "no"}, r"'prefix_reuse' must be true or false, got 'no'"),
        ({**QWEN, "prefix_reuse": "True"}, r"'prefix_reuse' must be true or false"),
        ({**BASE, "prefix_reuse": "false"}, r"'prefix_reuse' applies to qwen3_reranker only"),
        ({**BASE, "cuda_graphs": "on"}, r"'cuda_graphs' must be true or false, got 'on'"),
    ],
)
def test_invalid_parameters_are_refused_with_the_reason(params, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig.from_parameters(params)


def test_defaults_and_values():
    config = EngineConfig.from_parameters({**BASE, "weights_hint": "run this"}, max_batch_size=64)
    assert config == EngineConfig(
        scorer="cross_encoder",
        weights_path="models/bge-reranker-base",
        dtype="auto",
        max_length=512,
        max_batch_tokens=16384,
        max_batch_size=64,
        weights_hint="run this",
    )
    config = EngineConfig.from_parameters(
        {
            "scorer": "qwen3_reranker",
            "weights_path": "/w",
            "dtype": "bfloat16",
            "max_length": "8192",
            "max_batch_tokens": "4096",
        }
    )
    assert (config.dtype, config.max_length) == ("bfloat16", 8192)
    assert config.max_batch_tokens == 8192, "a budget below max_length is raised so the longest pair still fits"


def test_prefix_reuse_is_on_unless_turned_off(make_scorer, qwen_dir):
    assert EngineConfig.from_parameters(QWEN).prefix_reuse
    assert EngineConfig.from_parameters({**QWEN, "prefix_reuse": "true"}).prefix_reuse
    assert not EngineConfig.from_parameters({**QWEN, "prefix_reuse": "false"}).prefix_reuse
    assert not make_scorer("qwen3_reranker", qwen_dir, max_length=512, prefix_reuse=False).prefix_reuse
    assert make_scorer("qwen3_reranker", qwen_dir, max_length=512).prefix_reuse


@pytest.mark.parametrize("scorer", ["cross_encoder", "qwen3_reranker", "bi_encoder"])
def test_auto_dtype_is_float32_on_cpu(scorer):
    config = EngineConfig.from_parameters({"scorer": scorer, "weights_path": "m"})
    assert config.torch_dtype(torch.device("cpu")) == torch.float32


def test_auto_dtype_on_gpu_and_explicit_dtypes():
    gpu = torch.device("cuda", 0)
    assert (
        EngineConfig.from_parameters({"scorer": "qwen3_reranker", "weights_path": "m"}).torch_dtype(gpu)
        == torch.bfloat16
    )
    assert EngineConfig.from_parameters(BASE).torch_dtype(gpu) == torch.float16
    for name, dtype in [("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16)]:
        config = EngineConfig.from_parameters({**BASE, "dtype": name})
        assert config.torch_dtype(torch.device("cpu")) == config.torch_dtype(gpu) == dtype


def test_models_paths_resolve_inside_the_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    assert MODELS_DIR_ENV == "RERANKER_MODELS_DIR"
    assert resolve_weights_path("models/bge-reranker-base") == tmp_path.resolve() / "bge-reranker-base"
    assert resolve_weights_path("models/a/b") == tmp_path.resolve() / "a" / "b"
    assert resolve_weights_path("/abs/folder") == Path("/abs/folder")


def test_without_the_variable_models_is_relative_to_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv(MODELS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_weights_path("models/x") == tmp_path.resolve() / "models" / "x"
    assert resolve_weights_path("elsewhere/x") == tmp_path.resolve() / "elsewhere" / "x"


def test_missing_weights_name_the_folder_and_the_fix(tmp_path):
    hint = "run 'reranker weights bge'"
    with pytest.raises(WeightsNotFoundError) as error:
        require_weights(tmp_path / "nope", hint=hint)
    assert str(tmp_path / "nope") in str(error.value)
    assert "does not exist" in str(error.value) and hint in str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="has no config.json"):
        require_weights(tmp_path / "empty")


def test_present_weights_are_returned(bge_dir):
    assert require_weights(bge_dir) == bge_dir


def test_load_scorer_fails_on_missing_weights_with_the_hint(monkeypatch, tmp_path):
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path))
    config = EngineConfig.from_parameters({**BASE, "weights_hint": "run 'reranker weights bge'"})
    with pytest.raises(WeightsNotFoundError) as error:
        load_scorer(config, torch.device("cpu"))
    assert str(tmp_path.resolve() / "bge-reranker-base") in str(error.value)
    assert "run 'reranker weights bge'" in str(error.value)


def test_a_catalog_model_gets_the_catalogs_hint_and_a_config_hint_wins():
    from rerank_engine import catalog

    shipped = EngineConfig.from_parameters(BASE, model_name="bge-reranker-base")
    assert shipped.weights_hint == catalog.download_hint("bge") and "reranker weights bge" in shipped.weights_hint
    assert EngineConfig.from_parameters({**BASE, "weights_hint": "ask Ann"}, model_name="bge-reranker-base"
                                        ).weights_hint == "ask Ann"
    assert EngineConfig.from_parameters(BASE, model_name="my-model").weights_hint == ""


def test_non_ascii_digits_are_refused_with_the_validation_message():
    with pytest.raises(ValueError, match="'max_length' must be a positive integer"):
        EngineConfig.from_parameters({"scorer": "cross_encoder", "weights_path": "m", "max_length": "²"})


@pytest.mark.parametrize(("folder", "kind", "limit"), [("bge_dir", "cross_encoder", 512), ("minilm_dir", "bi_encoder", 512)])
def test_max_length_over_the_position_embeddings_fails_the_load(request, folder, kind, limit):
    config = EngineConfig(scorer=kind, weights_path=str(request.getfixturevalue(folder)), max_length=limit + 1)
    with pytest.raises(ValueError, match=f"max_length {limit + 1} is over the {limit} positions"):
        load_scorer(config, torch.device("cpu"))
    assert load_scorer(EngineConfig(scorer=kind, weights_path=config.weights_path, max_length=limit),
                       torch.device("cpu"))
