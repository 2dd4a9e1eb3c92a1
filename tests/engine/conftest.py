"""Engine-tier fixtures: tiny random-weight models of the real architectures
with the real tokenizers, built once per session, and scorers loaded from them."""

from __future__ import annotations

import pytest
import torch

from rerank_engine.engine import EngineConfig, load_scorer
from tests import tiny_models


@pytest.fixture(scope="session")
def bge_dir(tmp_path_factory):
    return tiny_models.build_tiny_bge(tmp_path_factory.mktemp("bge") / "bge-reranker-base")


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    return tiny_models.build_tiny_qwen3(tmp_path_factory.mktemp("qwen") / "Qwen3-Reranker-4B", seed=4)


@pytest.fixture(scope="session")
def minilm_dir():
    return tiny_models.minilm_source()


def scorer_for(kind: str, folder, **overrides):
    config = EngineConfig(scorer=kind, weights_path=str(folder), **overrides)
    return load_scorer(config, torch.device("cpu"))


@pytest.fixture(scope="session")
def bge(bge_dir):
    return scorer_for("cross_encoder", bge_dir, max_length=512)


@pytest.fixture(scope="session")
def qwen(qwen_dir):
    return scorer_for("qwen3_reranker", qwen_dir, max_length=8192)


@pytest.fixture(scope="session")
def minilm(minilm_dir):
    return scorer_for("bi_encoder", minilm_dir, max_length=256)
