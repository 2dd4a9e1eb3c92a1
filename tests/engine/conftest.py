"""Engine-tier fixtures: the tiny random-weight models (real architectures, real
tokenizers) built once per session, and scorers loaded from them through the
engine's public `load_scorer`, on CPU in float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rerank_engine.engine import EngineConfig, load_scorer
from tests import tiny_models


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("engine-models")
    tiny_models.build_models_dir(folder)
    return folder


@pytest.fixture(scope="session")
def bge_dir(engine_models) -> Path:
    return engine_models / "bge-reranker-base"


@pytest.fixture(scope="session")
def qwen_dir(engine_models) -> Path:
    return engine_models / "Qwen3-Reranker-4B"


@pytest.fixture(scope="session")
def minilm_dir(engine_models) -> Path:
    return engine_models / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def make_scorer():
    """`make_scorer(kind, folder, **EngineConfig fields)`, cached: loading runs a warm-up pass."""
    cache = {}

    def make(kind: str, folder: Path, **fields):
        key = (kind, str(folder), tuple(sorted(fields.items())))
        if key not in cache:
            config = EngineConfig(scorer=kind, weights_path=str(folder), **fields)
            cache[key] = load_scorer(config, torch.device("cpu"))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def bge(make_scorer, bge_dir):
    return make_scorer("cross_encoder", bge_dir, max_length=512)


@pytest.fixture(scope="session")
def qwen(make_scorer, qwen_dir):
    return make_scorer("qwen3_reranker", qwen_dir, max_length=8192)


@pytest.fixture(scope="session")
def minilm(make_scorer, minilm_dir):
    return make_scorer("bi_encoder", minilm_dir, max_length=256)


@pytest.fixture(scope="session")
def recipe(qwen_dir):
    """The Qwen3-Reranker model card's recipe (tests/engine/test_qwen3.py) around the tiny Qwen3."""
    from tests.engine.test_qwen3 import Recipe

    return Recipe(qwen_dir, max_length=8192)


@pytest.fixture(scope="session")
def short_recipe(qwen_dir):
    """The same recipe at max_length 128, where pairs get cut."""
    from tests.engine.test_qwen3 import Recipe

    return Recipe(qwen_dir, max_length=128)


@pytest.fixture(scope="session")
def xlmr_tokenizer():
    return AutoTokenizer.from_pretrained(tiny_models.TOKENIZERS_DIR / "xlm-roberta")


@pytest.fixture(scope="session")
def bert_tokenizer():
    return AutoTokenizer.from_pretrained(tiny_models.minilm_source())
