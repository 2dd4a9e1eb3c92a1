"""The tiny models the other tiers run on: the models folder matches the
shipped Triton configs, the tokenizers are the real ones, and the random
weights score pairs far enough apart for parity and ranking tests to mean something."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rerank_engine.scoring import Pair
from tests import tiny_models

REPO_ROOT = Path(__file__).resolve().parents[2]

PAIRS = [
    Pair("what is a panda?", "The giant panda is a bear species endemic to China."),
    Pair("what is a panda?", "hi"),
    Pair("今天天气如何？", "今天晴天适合外出游玩"),
    Pair("numbers", "12345"),
    Pair("a", "b"),
]


def test_the_models_folder_has_every_folder_the_triton_configs_name(engine_models):
    configs = sorted((REPO_ROOT / "model_repository").glob("*/config.pbtxt"))
    assert configs, "no model_repository/*/config.pbtxt found"
    named = set()
    for config in configs:
        match = re.search(
            r'key:\s*"weights_path",\s*value:\s*\{\s*string_value:\s*"models/([^"]+)"', config.read_text()
        )
        assert match, f"{config} has no models/<folder> weights_path"
        named.add(match.group(1))
    assert named <= set(tiny_models.MODELS_LAYOUT)
    for folder in tiny_models.MODELS_LAYOUT:
        assert (engine_models / folder / "config.json").is_file(), folder
        assert (engine_models / folder / "tokenizer.json").is_file(), folder


def test_the_tokenizers_are_the_shared_ones(engine_models):
    assert tiny_models.TOKENIZERS_DIR.is_dir(), f"{tiny_models.TOKENIZERS_DIR} is missing (CI has it at ../shared)"
    for folder, tokenizer in [
        ("bge-reranker-base", "xlm-roberta"),
        ("Qwen3-Reranker-4B", "qwen3"),
        ("Qwen3-Reranker-8B", "qwen3"),
    ]:
        copied = (engine_models / folder / "tokenizer.json").read_bytes()
        assert copied == (tiny_models.TOKENIZERS_DIR / tokenizer / "tokenizer.json").read_bytes()
    assert (engine_models / "all-MiniLM-L6-v2" / "model.safetensors").stat().st_size > 80_000_000


def test_the_random_weights_tell_pairs_apart(make_scorer, engine_models):
    spreads = {}
    for kind, folder in [
        ("cross_encoder", "bge-reranker-base"),
        ("qwen3_reranker", "Qwen3-Reranker-4B"),
        ("qwen3_reranker", "Qwen3-Reranker-8B"),
    ]:
        scores = make_scorer(kind, engine_models / folder, max_length=512).score(PAIRS).score
        spreads[folder] = scores
        assert np.ptp(scores) > 0.1, f"{folder} scores {scores}: raise INIT_RANGE"
        assert len(set(np.round(scores, 4))) == len(PAIRS), f"{folder} scores {scores} tie"
    assert np.abs(spreads["Qwen3-Reranker-4B"] - spreads["Qwen3-Reranker-8B"]).max() > 0.05, "4B and 8B differ"


def test_building_is_repeatable(tmp_path):
    first = tiny_models.build_tiny_qwen3(tmp_path / "a", seed=4)
    second = tiny_models.build_tiny_qwen3(tmp_path / "b", seed=4)
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    tiny_models.link_minilm(tmp_path / "m")
    tiny_models.link_minilm(tmp_path / "m")  # a second call on the same folder is a no-op
