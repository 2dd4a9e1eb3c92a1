"""The packed (padding-free) layout: offsets, positions, key gathering and
token-budget chunks, checked on hand-made sequences whose answers are known."""

from __future__ import annotations

import pytest
import torch

from rerank_engine.packing import pack, pack_chunk, plan_packed

CPU = torch.device("cpu")


def test_rows_without_heads_lie_end_to_end():
    batch = pack([], [(None, [5, 6, 7]), (None, [8]), (None, [9, 10])], CPU, position_start=2)
    assert batch.ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert batch.positions.tolist() == [2, 3, 4, 2, 2, 3]  # each row counts from the model's first position
    assert batch.cu_q.tolist() == batch.cu_k.tolist() == [0, 3, 4, 6]
    assert batch.cu_q.dtype == torch.int32
    assert (batch.max_q, batch.max_k) == (3, 3)
    assert batch.kv_index is None, "keys are the tokens themselves: nothing to gather"
    assert batch.first.tolist() == [0, 3, 4]
    assert batch.last.tolist() == [2, 3, 5]


def test_rows_continue_their_head():
    heads = [[1, 2, 3], [4, 5]]
    rows = [(0, [10, 11]), (1, [12]), (0, [13]), (None, [14, 15])]
    batch = pack(heads, rows, CPU)
    assert batch.ids.tolist() == [1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]
    # A row's positions continue after its head, as in the whole sequence.
    assert batch.positions.tolist() == [0, 1, 2, 0, 1, 3, 4, 2, 3, 0, 1]
    assert batch.cu_q.tolist() == [0, 3, 5, 7, 8, 9, 11]
    # Keys: each head alone, then each row's head followed by the row.
    assert batch.kv_index.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 3, 4, 7, 0, 1, 2, 8, 9, 10]
    assert batch.cu_k.tolist() == [0, 3, 5, 10, 13, 17, 19]
    assert (batch.max_q, batch.max_k) == (3, 5)
    assert batch.last.tolist() == [6, 7, 8, 10]
    assert batch.tokens == 11


def test_a_row_needs_a_token_of_its_own():
    with pytest.raises(ValueError, match="at least one token"):
        pack([[1, 2]], [(0, [])], CPU)


def test_chunks_count_each_head_once_and_keep_the_budget():
    heads = [[0] * 10, [0] * 4]
    rows = [(0, [1] * 5), (0, [1] * 5), (1, [1] * 6), (0, [1] * 5), (None, [1] * 30), (None, [1] * 2)]
    chunks = plan_packed(heads, rows, max_tokens=30)
    # 10 + 5 + 5 = 20; + 4 + 6 = 30; the third head-0 row needs its head again in a new chunk; the
    # 30-token row alone fills one; the last row starts another.
    assert chunks == [[0, 1, 2], [3], [4], [5]]
    for chunk in chunks:
        batch = pack_chunk(heads, rows, chunk, CPU)
        assert batch.tokens <= 30
        assert batch.tokens == sum(len(rows[i][1]) for i in chunk) + sum(
            len(heads[h]) for h in {rows[i][0] for i in chunk} if h is not None
        )


def test_a_row_over_the_budget_gets_a_chunk_of_its_own():
    assert plan_packed([], [(None, [1] * 50), (None, [1] * 3), (None, [1] * 60)], max_tokens=40) == [[0], [1], [2]]


def test_pack_chunk_renumbers_the_heads_it_takes():
    heads = [[1], [2, 2], [3, 3, 3]]
    rows = [(2, [7]), (0, [8])]
    batch = pack_chunk(heads, rows, [0], CPU)
    assert batch.ids.tolist() == [3, 3, 3, 7]
    assert batch.positions.tolist() == [0, 1, 2, 3]
