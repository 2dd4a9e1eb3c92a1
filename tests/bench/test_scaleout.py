"""bench.scaleout on the CPU with a tiny model: the three stacks it compares on
two GPUs start here without GPUs (one Triton; two Tritons behind one gateway),
the closed-loop clients run through each, and the JSON says what each Triton
served and the factor against the one-GPU stack."""

from __future__ import annotations

import json

import pytest

from bench import scaleout

pytestmark = pytest.mark.integration


def test_the_stacks_run_and_two_tritons_share_the_requests(models_dir, repository, tmp_path, capsys):
    out = tmp_path / "scaleout"
    scaleout.main(["bge", "--gpus", "none", "--stacks", "one_gpu", "triton_per_gpu",
                   "--models-dir", str(models_dir), "--model-repository", str(repository),
                   "--concurrency", "1", "4", "--docs", "3", "--doc-tokens", "8", "16", "--requests", "12",
                   "--warmup", "1", "--weights-label", "tiny random test model", "--out", str(out)])
    data = json.loads((out / "scaleout.json").read_text())
    assert data["schema"] == scaleout.SCHEMA and data["environment"]["gpus"] == []
    one, two = data["configurations"]["one_gpu"], data["configurations"]["triton_per_gpu"]
    assert one["tritons"] == [None] and two["tritons"] == [None, None]
    for stack in (one, two):
        figures = stack["models"]["bge-reranker-base"]
        assert figures["failures"] == 0 and [level["requests"] for level in figures["levels"]] == [12, 12]
        assert figures["best_pairs_per_s"] == max(level["pairs_per_s"] for level in figures["levels"]) > 0
        # 3 documents fit one Triton request (max_batch_size 256): one inference per request.
        assert sum(figures["requests_per_triton"]) == 24
    assert all(count > 0 for count in two["models"]["bge-reranker-base"]["requests_per_triton"]), \
        "the gateway balanced over both Tritons"
    factors = data["factors"]["bge-reranker-base"]
    assert factors["one_gpu"] == 1.0
    expected = two["models"]["bge-reranker-base"]["best_pairs_per_s"] / one["models"]["bge-reranker-base"][
        "best_pairs_per_s"]
    assert factors["triton_per_gpu"] == pytest.approx(expected, abs=1e-3)
    assert "| bge-reranker-base | triton_per_gpu |" in (out / "scaleout.md").read_text()
    assert str(out / "scaleout.json") in capsys.readouterr().out


def test_one_gpu_is_refused_and_the_stacks_are_named_for_the_gpus():
    stacks = scaleout.configurations(["0", "1"])
    assert stacks["one_gpu"]["tritons"] == ["0"] and stacks["one_triton"]["tritons"] == ["0,1"]
    assert stacks["triton_per_gpu"]["tritons"] == ["0", "1"]
    with pytest.raises(SystemExit, match="two"):
        scaleout.main(["bge", "--gpus", "3"])
