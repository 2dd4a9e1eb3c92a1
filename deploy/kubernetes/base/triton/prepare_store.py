"""Prepares the Triton pods' shared volume (the `reranker-store` PersistentVolumeClaim) before
tritonserver starts; the init containers of every Triton pod run it, often several pods at once.

  prepare_store.py --store DIR repository IMAGE_REPOSITORY
      Copies the image's model repository to $RERANKER_MODEL_REPOSITORY unless the volume already
      has one. After that first copy the repository on the volume is the operator's: edits and
      added models stay, and a newer image does not overwrite it (the README says how to refresh).
  prepare_store.py --store DIR weights [--source huggingface|modelscope] MODEL...
      `reranker weights` for each model (names separated by spaces or commas; empty ones are
      skipped) into $RERANKER_MODELS_DIR, unless its folder is already complete. The folder is the
      one the model's config.pbtxt in $RERANKER_MODEL_REPOSITORY names, so this runs after the
      repository step.

The two paths are read the way `reranker triton` reads them (launcher.settings.TritonSettings) and
must lie on the store volume. Every step holds an exclusive lock on DIR/.prepare.lock, so one pod
copies or downloads while the others wait and then find the result. Results appear by a rename on
the same volume, never half-written: a pod killed mid-download leaves only DIR/.staging, which the
next run clears. That matters because `reranker weights` takes a folder holding config.json as
complete, and a download that died after config.json would otherwise be skipped for good.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from launcher.settings import TritonSettings
from launcher.weights import fetch_weights
from rerank_engine import catalog
from rerank_engine.model_config import ModelConfig


def log(message: str) -> None:
    print(f"prepare-store: {message}", flush=True)


@contextmanager
def store_lock(store: Path):
    """POSIX record locks (lockf), which NFS and the other shared filesystems a ReadWriteMany
    volume sits on carry between hosts; the lock goes with the process if a pod dies."""
    with open(store / ".prepare.lock", "a+") as handle:
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log("another pod is preparing the store; waiting for it")
            started = time.monotonic()
            fcntl.lockf(handle, fcntl.LOCK_EX)
            log(f"lock acquired after {time.monotonic() - started:.0f} s")
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def fresh_staging(store: Path) -> Path:
    """DIR/.staging, emptied: whatever is there was left by a run that died (we hold the lock)."""
    staging = store / ".staging"
    if staging.exists():
        log(f"clearing {staging}, left by an interrupted run")
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def on_store(path: Path, store: Path, variable: str) -> Path:
    path = path.resolve()
    if not path.is_relative_to(store):
        raise SystemExit(f"{variable}={path} is not on the store volume {store} (results are renamed into place)")
    return path


def seed_repository(store: Path, image_repository: Path) -> None:
    target = on_store(TritonSettings().model_repository, store, "RERANKER_MODEL_REPOSITORY")
    if not any(image_repository.glob("*/config.pbtxt")):
        raise SystemExit(f"{image_repository} holds no Triton models; nothing to seed the store with")
    with store_lock(store):
        if target.exists():
            if any(target.glob("*/config.pbtxt")):
                log(f"model repository {target} is already on the volume; kept as it is")
                return
            if any(target.iterdir()):
                raise SystemExit(f"{target} exists but holds no <model>/config.pbtxt; fix or remove it")
            target.rmdir()  # an empty folder, made by hand: seed it
        staging = fresh_staging(store)
        # symlinks=True: each <model>/1/model.py stays a link to the shared reranker_model.py.
        shutil.copytree(image_repository, staging / "model_repository", symlinks=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / "model_repository").rename(target)
        staging.rmdir()
        log(f"model repository seeded from {image_repository} into {target}")


def model_names(arguments: list[str]) -> list[str]:
    """Each argument may hold several names ("bge qwen4b", "bge,qwen4b"), as a ConfigMap value does."""
    names = [name for argument in arguments for name in re.split(r"[\s,]+", argument) if name]
    return list(dict.fromkeys(names))


def weights_folder(name: str, repository: Path, models_dir: Path) -> tuple[str, Path]:
    """(Triton model name, its weights folder under models_dir), as `reranker weights` finds them."""
    entry = catalog.lookup(name)
    if entry is None:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join([*catalog.ALIASES, *catalog.BY_NAME])}")
    config_file = repository / entry.name / "config.pbtxt"
    if not config_file.is_file():
        raise SystemExit(f"{config_file} does not exist: seed the model repository first")
    target = ModelConfig.from_pbtxt(config_file).weights_dir(models_dir)
    if not target.resolve().is_relative_to(models_dir):
        raise SystemExit(f"{entry.name}'s weights_path points outside {models_dir}: put those weights there yourself")
    return entry.name, target


def fetch_models(store: Path, names: list[str], source: str) -> None:
    models_dir = on_store(TritonSettings().models_dir, store, "RERANKER_MODELS_DIR")
    repository = TritonSettings().model_repository.resolve()
    for name in names:
        model, target = weights_folder(name, repository, models_dir)
        with store_lock(store):
            if (target / "config.json").is_file():
                log(f"{model}: weights already in {target}")
                continue
            staging = fresh_staging(store)
            if target.exists():  # no config.json: an unfinished copy made by hand; keep it out of the way
                aside = staging / f"{target.name}.incomplete"
                log(f"{model}: {target} has no config.json; moved to {aside} (removed on the next run)")
                target.rename(aside)
            log(f"{model}: fetching weights ({source})")
            started = time.monotonic()
            fetched = fetch_weights(name, staging / "models", repository, source)
            target.parent.mkdir(parents=True, exist_ok=True)
            fetched.rename(target)
            shutil.rmtree(staging)
            log(f"{model}: weights in {target} after {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True, help="the volume's mount point")
    steps = parser.add_subparsers(dest="step", required=True)
    repository = steps.add_parser("repository", help="seed the model repository from the image")
    repository.add_argument("image_repository", type=Path)
    weights = steps.add_parser("weights", help="fetch models' weights")
    weights.add_argument("--source", choices=("huggingface", "modelscope"), default="huggingface")
    weights.add_argument("models", nargs="*", help="model names or aliases; spaces or commas separate several")
    args = parser.parse_args(argv)
    store = args.store.resolve()
    if not store.is_dir():
        raise SystemExit(f"store {store} is not a mounted folder")
    if not os.access(store, os.W_OK):
        raise SystemExit(f"store {store} is not writable by uid {os.getuid()}: give the volume to it or its group")
    if args.step == "repository":
        seed_repository(store, args.image_repository)
    else:
        names = model_names(args.models)
        if not names:
            log("no models named; nothing to fetch")
        fetch_models(store, names, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
