"""The models of `model_repository/` as the benchmarks name them: a Triton
name, a gateway alias (the catalog's) or a weights folder name, resolved to
the model's parsed `config.pbtxt` (`rerank_engine.model_config`).

No torch: the perf_analyzer data generator and gateway-only benchmark runs
use it on machines without it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from rerank_engine import catalog
from rerank_engine.model_config import ModelConfig, repository_models as _repository_models

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"
"""bench.random_models writes it into every folder it builds, so results can be labelled random-weight ones."""


def repository_models(repository: Path = MODEL_REPOSITORY) -> dict[str, ModelConfig]:
    return _repository_models(repository)


def resolve(name: str, repository: Path = MODEL_REPOSITORY) -> ModelConfig:
    """A Triton model name, an alias, a hub id or a weights folder name (any case) to its model."""
    models = repository_models(repository)
    entry = catalog.lookup(name) or catalog.lookup(name.lower())
    wanted = (entry.name if entry else name).lower()
    for config in models.values():
        if wanted in (config.name.lower(), config.weights_folder.lower()):
            return config
    valid = sorted({*models, *catalog.ALIASES, *(c.weights_folder for c in models.values())})
    raise SystemExit(f"unknown model {name!r}; valid names: {', '.join(valid)}")


def repository_with_instances(source: Path, target: Path, count: int) -> Path:
    """A copy of a model repository whose models all run `count` instances per device (every config
    variant), for benchmarks that compare instance counts; the links to the shared model.py are kept."""
    shutil.copytree(source, target, symlinks=True)
    for config in [*target.glob("*/config.pbtxt"), *target.glob("*/configs/*.pbtxt")]:
        changed, found = re.subn(r"(instance_group\s*\[\s*\{\s*count:\s*)\d+", rf"\g<1>{count}", config.read_text())
        if not found:
            raise ValueError(f"{config}: no instance_group count to set")
        config.write_text(changed)
    return target
