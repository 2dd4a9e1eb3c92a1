"""Turning a request's BYTES tensors into pairs: rows, optional instructions,
the per-request document cap, and an `InvalidRequest` that names the input
(and row) at fault."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_engine.inputs import InvalidRequest, decode_pairs, document_cap


def rows(*values) -> np.ndarray:
    """A Triton BYTES tensor of shape [n, 1]."""
    return np.array([[v.encode() if isinstance(v, str) else v] for v in values], dtype=np.object_)


def test_rows_become_pairs_in_order():
    pairs = decode_pairs(rows("q1", "q2", "q1"), rows("一", "d2", "🐼"), None)
    assert [(p.query, p.document, p.instruction) for p in pairs] == [
        ("q1", "一", None),
        ("q2", "d2", None),
        ("q1", "🐼", None),
    ]


def test_instructions_per_row_and_empty_means_default():
    pairs = decode_pairs(rows("q", "q"), rows("a", "b"), rows("find", ""))
    assert [p.instruction for p in pairs] == ["find", None]


def test_a_flat_tensor_is_read_too():
    flat = np.array([b"q", b"q"], dtype=np.object_)
    assert [p.document for p in decode_pairs(flat, np.array([b"a", b"b"], dtype=np.object_), None)] == ["a", "b"]


def test_a_single_query_row_is_not_broadcast():
    # The contract is one query row per document (the gateway repeats the
    # query); a lone query row next to several documents is an error, not a broadcast.
    with pytest.raises(InvalidRequest, match=r"input 'query' has 1 rows; expected 3, one per document"):
        decode_pairs(rows("q"), rows("a", "b", "c"), None)
    assert len(decode_pairs(rows("q"), rows("a"), None)) == 1


@pytest.mark.parametrize(
    ("query", "document", "instruction", "message"),
    [
        (rows("q", "q"), rows("a", "b", "c"), None, r"input 'query' has 2 rows; expected 3"),
        (rows("q", "q"), rows("a", "b"), rows("x", "y", "z"), r"input 'instruction' has 3 rows; expected 2"),
        (rows("q", "q"), rows("a", "b"), rows("x"), r"input 'instruction' has 1 rows; expected 2"),
        (None, rows("a"), None, r"input 'query' is required"),
        (rows("q"), None, None, r"input 'document' is required"),
        (None, None, None, r"input '(query|document)' is required"),
    ],
)
def test_mismatched_or_missing_inputs_name_the_input(query, document, instruction, message):
    with pytest.raises(InvalidRequest, match=message):
        decode_pairs(query, document, instruction)


@pytest.mark.parametrize(
    ("query", "document", "instruction", "message"),
    [
        (rows("q", "q"), rows("a", b"\xff\xfe"), None, r"input 'document' row 1 is not valid UTF-8"),
        (rows(b"\xc3", "q"), rows("a", "b"), None, r"input 'query' row 0 is not valid UTF-8"),
        (
            rows("q", "q"),
            rows("a", "b"),
            rows("ok", b"bad \xed\xa0\x80"),
            r"input 'instruction' row 1 is not valid UTF-8",
        ),
    ],
)
def test_invalid_utf8_names_the_input_and_the_row(query, document, instruction, message):
    with pytest.raises(InvalidRequest, match=message):
        decode_pairs(query, document, instruction)


def test_invalid_request_is_a_value_error():
    assert issubclass(InvalidRequest, ValueError)


def test_the_document_cap_reaches_every_pair():
    pairs = decode_pairs(rows("q", "q"), rows("a", "b"), None, max_document_tokens=7)
    assert [p.max_document_tokens for p in pairs] == [7, 7]
    assert [p.max_document_tokens for p in decode_pairs(rows("q"), rows("a"), None)] == [None]


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        (None, None),
        ("", None),
        ("{}", None),
        ({}, None),
        ('{"max_document_tokens": 64}', 64),
        ({"max_document_tokens": 1}, 1),
        ({"other": "x"}, None),
    ],
)
def test_document_cap_reads_the_request_parameter(parameters, expected):
    assert document_cap(parameters) == expected


@pytest.mark.parametrize("value", [0, -3, True, "64", 2.5])
def test_document_cap_must_be_a_positive_integer(value):
    with pytest.raises(InvalidRequest, match="'max_document_tokens' must be a positive integer"):
        document_cap({"max_document_tokens": value})
