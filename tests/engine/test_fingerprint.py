"""The model fingerprint (rerank_engine/fingerprint.py): the same for the same
weights and settings wherever they are, different when anything that changes
a score changes, on real tiny checkpoints and on files past the whole-file limit."""

from __future__ import annotations

import os
import shutil

import pytest

from rerank_engine import contract, fingerprint
from rerank_engine.model_config import repository_models
from tests import tiny_models
from tests.engine.test_model_config import REPOSITORY

PARAMS = {"scorer": "cross_encoder", "weights_path": "models/bge-reranker-base", "dtype": "auto", "max_length": "512"}


@pytest.fixture
def bge(tmp_path):
    return tiny_models.build_tiny_bge(tmp_path / "bge", seed=0)


def of(folder, params=PARAMS, dtype="float32", device="cpu"):
    return fingerprint.model_fingerprint(params, folder, dtype, device)


def test_the_same_weights_anywhere_give_the_same_fingerprint(bge, tmp_path):
    copy = shutil.copytree(bge, tmp_path / "elsewhere" / "bge")
    os.utime(copy / "model.safetensors", (1, 1))  # another download: other times, the same content
    moved = {**PARAMS, "weights_path": "/mnt/weights/bge"}
    assert of(bge) == of(copy) == of(copy, moved) and len(of(bge)) == 32


def test_other_weights_tokenizer_config_or_settings_change_it(bge, tmp_path):
    reference = of(bge)
    other_seed = tiny_models.build_tiny_bge(tmp_path / "seed1", seed=1)
    assert of(other_seed) != reference
    changed = {}
    for name, edit in {"config.json": b" ", "tokenizer_config.json": b" "}.items():
        folder = shutil.copytree(bge, tmp_path / f"edited-{name}")
        with (folder / name).open("ab") as handle:
            handle.write(edit)
        changed[name] = of(folder)
    extra = shutil.copytree(bge, tmp_path / "extra")
    (extra / "1_Pooling").mkdir()
    (extra / "1_Pooling" / "config.json").write_text("{}")
    changed["a new file in a subfolder"] = of(extra)
    for key, value in {"dtype": "float16", "max_length": "256", "quantization": "fp8", "chunk_tokens": "128",
                       "scorer": "bi_encoder", "packed": "false"}.items():
        changed[f"parameter {key}"] = of(bge, {**PARAMS, key: value})
    changed["served in bfloat16"] = of(bge, dtype="bfloat16")
    changed["on a GPU"] = of(bge, device="cuda")
    assert reference not in changed.values() and len(set(changed.values())) == len(changed), changed


def test_what_changes_no_score_leaves_it(bge):
    reference = of(bge)
    assert of(bge, {**PARAMS, contract.PARAM_BATCH_LOG: "off", contract.PARAM_WEIGHTS_HINT: "download it"}) == reference
    (bge / ".cache").mkdir()
    (bge / ".cache" / "download.lock").write_text("hub metadata")
    assert of(bge) == reference


def test_a_large_file_is_sampled_and_any_sampled_change_shows(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 4 * 2**20)
    path = tmp_path / "model.safetensors"
    data = bytearray(os.urandom(24 * 2**20))
    path.write_bytes(data)
    reference = fingerprint.file_digest(path)
    assert reference.startswith("sampled-")
    for offset in (0, len(data) - 1, fingerprint.EDGE_BYTES + (len(data) - 2 * fingerprint.EDGE_BYTES) // 65 * 10):
        changed = bytearray(data)
        changed[offset] ^= 0xFF
        path.write_bytes(changed)
        assert fingerprint.file_digest(path) != reference, offset
    path.write_bytes(data + b"\0")  # one byte longer
    assert fingerprint.file_digest(path) != reference


def test_the_engine_code_is_part_of_it(bge, monkeypatch, tmp_path):
    reference = of(bge)
    engine = shutil.copytree(fingerprint.ENGINE_DIR, tmp_path / "engine")
    (engine / "scoring.py").write_text((engine / "scoring.py").read_text() + "\n# a change\n")
    monkeypatch.setattr(fingerprint, "ENGINE_DIR", engine)
    assert of(bge) != reference


def test_every_shipped_config_declares_the_fingerprint_output():
    # The gateway asks every model for every output of the contract; Triton refuses one a config lacks.
    for name, config in repository_models(REPOSITORY).items():
        text = (REPOSITORY / name / "config.pbtxt").read_text()
        for output in contract.OUTPUTS:
            assert f'name: "{output}"' in text, (name, output)
    for gpu in REPOSITORY.glob("*/configs/*.pbtxt"):
        assert all(f'name: "{output}"' in gpu.read_text() for output in contract.OUTPUTS), gpu
