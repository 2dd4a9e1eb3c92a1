"""Finding a model's weights folder, and failing clearly when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

from rerank_engine.contract import MODELS_DIR_ENV


class WeightsNotFoundError(FileNotFoundError):
    """The weights folder a model's config points at does not hold a model."""


def models_dir() -> Path:
    """The models folder: `$RERANKER_MODELS_DIR`, else `./models`."""
    return Path(os.environ.get(MODELS_DIR_ENV) or "models").resolve()


def resolve_weights_path(value: str) -> Path:
    """Turn a `weights_path` parameter into a folder.

    `models/<folder>` (the repository's defaults) is looked up inside the models
    folder, so one `--models-dir` flag moves every model; absolute paths are
    taken as they are; other relative paths are relative to the working directory.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if path.parts and path.parts[0] == "models":
        return models_dir().joinpath(*path.parts[1:])
    return path.resolve()


def require_weights(folder: Path, hint: str = "") -> Path:
    """Raise a `WeightsNotFoundError` naming the folder and how to fill it."""
    if (folder / "config.json").is_file():
        return folder
    state = "does not exist" if not folder.exists() else "has no config.json"
    message = f"weights folder {folder} {state}."
    if hint:
        message += f" To get the weights: {hint}"
    raise WeightsNotFoundError(message)
