"""CUDA graph replay (rerank_engine.cuda_graphs) as far as a CPU can check it:
the shape buckets, the config switch, and that a CPU model ignores it. The
replay itself is measured and compared with the eager forward on a GPU by
`bench.profile_engine --cuda-graphs`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rerank_engine.cuda_graphs import ROW_BUCKETS, WIDTH_STEP, GraphedForward, bucket
from rerank_engine.engine import EngineConfig
from rerank_engine.scoring import Pair


@pytest.mark.parametrize(
    ("rows", "width", "shape"),
    [(1, 1, (1, 32)), (1, 32, (1, 32)), (1, 33, (1, 64)), (3, 100, (4, 128)), (36, 276, (48, 288)),
     (64, 512, (64, 512)), (256, 90, (256, 96))],
)
def test_a_micro_batch_fits_the_smallest_bucket_that_holds_it(rows, width, shape):
    assert bucket(rows, width) == shape
    assert shape[0] in ROW_BUCKETS and shape[1] % WIDTH_STEP == 0


def test_more_rows_than_the_last_bucket_run_eagerly():
    assert bucket(ROW_BUCKETS[-1] + 1, 64) is None


def test_cuda_graphs_are_off_unless_turned_on():
    params = {"scorer": "cross_encoder", "weights_path": "models/bge-reranker-base"}
    assert not EngineConfig.from_parameters(params).cuda_graphs
    assert EngineConfig.from_parameters({**params, "cuda_graphs": "true"}).cuda_graphs


def test_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="need a CUDA device"):
        GraphedForward(lambda *a: None, 0, torch.device("cpu"), 4096)


def test_on_the_cpu_the_switch_changes_nothing(make_scorer, bge_dir):
    pairs = [Pair("what do pandas eat?", "Giant pandas eat bamboo."), Pair("capital of France", "Paris " * 40)]
    eager = make_scorer("cross_encoder", bge_dir, max_length=512)
    switched = make_scorer("cross_encoder", bge_dir, max_length=512, cuda_graphs=True)
    assert switched.graphs is None and switched.graph_rows == 0
    np.testing.assert_array_equal(switched.score(pairs).score, eager.score(pairs).score)
