"""The fingerprint of what a model instance serves: one short string that
changes whenever anything that changes a score changes, computed once at load
by the Triton model and sent back with every response
(`contract.OUTPUT_FINGERPRINT`), so the gateway's score cache can tell a score
of these weights from a score of others served under the same name.

It covers:
- the weights folder's files, by relative name, size and content: files up to
  `FULL_HASH_BYTES` are hashed whole (config.json, the tokenizer files, small
  checkpoints); larger ones by their head and tail and `SAMPLES` blocks spread
  evenly between (a fine-tuned or re-quantized checkpoint changes nearly every
  block; reading 16 GB at every load would not do);
- the config.pbtxt parameters (scorer, dtype, max_length, quantization,
  chunk_tokens, packed, ...), less those that only name or log things;
- the dtype the weights are served in on this device, and the device type;
- the engine's own source code and the versions of torch, transformers and
  tokenizers, which decide templates, truncation and numerics.

Content, not modification times: replicas that each downloaded the same
weights agree, so a fleet shares one Redis cache. Importable without torch.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata
from pathlib import Path
from typing import Mapping

from rerank_engine import contract

VERSION = "1"
"""Bumped when what the fingerprint covers changes, so old entries are never read under a new scheme."""

FULL_HASH_BYTES = 64 * 2**20
"""Whole-file hashing up to here: every tokenizer and config file (an XLM-R tokenizer.json is 17 MB); the
90 MB MiniLM checkpoint and every larger one are sampled, so no load reads more than a few MB for it."""
SAMPLES = 64
SAMPLE_BYTES = 64 * 2**10
EDGE_BYTES = 2**20  # head and tail of a large file: a safetensors header and its first and last tensors

UNSCORED_PARAMETERS = frozenset({contract.PARAM_BATCH_LOG, contract.PARAM_WEIGHTS_HINT, contract.PARAM_WEIGHTS_PATH})
"""Parameters that change no score: the log level, the download hint, and where the folder is (its content
counts, not its path, so replicas that mount it elsewhere agree)."""

LIBRARIES = ("torch", "transformers", "tokenizers")

ENGINE_DIR = Path(__file__).resolve().parent


def model_fingerprint(parameters: Mapping[str, str], weights: Path, dtype: str, device_type: str) -> str:
    """`parameters`: the model's config.pbtxt parameters; `weights`: its weights folder; `dtype`: the torch
    dtype name it is served in; `device_type`: `cpu` or `cuda`."""
    digest = hashlib.blake2b(digest_size=16, person=b"reranker-fp")
    _field(digest, f"v{VERSION}")
    for key in sorted(set(parameters) - UNSCORED_PARAMETERS):
        _field(digest, f"param {key}={parameters[key]}")
    _field(digest, f"dtype {dtype} on {device_type}")
    for library in LIBRARIES:
        _field(digest, f"{library} {_version(library)}")
    for path in sorted(ENGINE_DIR.glob("*.py")):
        _field(digest, f"engine {path.name} {hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()}")
    for relative, path in _files(Path(weights)):
        _field(digest, f"file {relative} {path.stat().st_size} {file_digest(path)}")
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The whole content of a file up to FULL_HASH_BYTES; beyond, its edges and SAMPLES evenly spread blocks."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        if size <= FULL_HASH_BYTES:
            while block := handle.read(2**20):
                digest.update(block)
            return digest.hexdigest()
        offsets = [0, size - EDGE_BYTES]
        stride = (size - 2 * EDGE_BYTES) // (SAMPLES + 1)
        offsets[1:1] = [EDGE_BYTES + stride * (i + 1) for i in range(SAMPLES)]
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(EDGE_BYTES if offset in (0, size - EDGE_BYTES) else SAMPLE_BYTES))
    return "sampled-" + digest.hexdigest()


def _files(folder: Path) -> list[tuple[str, Path]]:
    """Every file under `folder` (symbolic links followed: a models folder may link to a shared copy), by
    relative POSIX name; hidden files and folders (a hub download's .cache, locks) left out."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith("."):
                path = Path(root) / name
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def _version(library: str) -> str:
    try:
        return metadata.version(library)
    except metadata.PackageNotFoundError:
        return "absent"


def _field(digest, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: no two field lists hash alike
