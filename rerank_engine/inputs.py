"""Turning one inference request's string tensors into pairs.

Triton hands the model BYTES tensors of shape [n, 1]. A malformed request
(mismatched row counts, invalid UTF-8) raises `InvalidRequest`, which the
Triton model turns into an INVALID_ARG error for that request alone.
"""

from __future__ import annotations

import json

import numpy as np

from rerank_engine import contract
from rerank_engine.pairs import Pair


class InvalidRequest(ValueError):
    pass


def _texts(name: str, tensor: np.ndarray) -> list[str]:
    texts = []
    for row, value in enumerate(tensor.reshape(-1)):
        try:
            texts.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        except UnicodeDecodeError as exc:
            reason = f"{exc.reason} at byte {exc.start}"
            raise InvalidRequest(f"input '{name}' row {row} is not valid UTF-8 ({reason})") from None
    return texts


def parse_parameters(parameters: str | dict | None) -> dict:
    """A request's parameters (Triton passes them as JSON text)."""
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters or "{}")
        except ValueError:
            raise InvalidRequest("request parameters are not valid JSON") from None
    return parameters if isinstance(parameters, dict) else {}


def sent_at_ns(parameters: str | dict | None) -> int:
    """The sender's clock when it sent the request, 0 when unknown or malformed (it only feeds telemetry)."""
    value = parse_parameters(parameters).get(contract.REQUEST_PARAM_SENT_AT_NS)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _positive(parameters: str | dict | None, name: str) -> int | None:
    value = parse_parameters(parameters).get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"parameter '{name}' must be a positive integer")
    return value


def document_cap(parameters: str | dict | None) -> int | None:
    """The request's `max_document_tokens` parameter."""
    return _positive(parameters, contract.REQUEST_PARAM_MAX_DOCUMENT_TOKENS)


def pair_options(parameters: str | dict | None) -> dict:
    """The request's parameters that shape each of its pairs: the `Pair` fields of the same meaning."""
    keep_end = parse_parameters(parameters).get(contract.REQUEST_PARAM_KEEP_END, False)
    if not isinstance(keep_end, bool):
        raise InvalidRequest(f"parameter '{contract.REQUEST_PARAM_KEEP_END}' must be true or false")
    return {
        "max_document_tokens": document_cap(parameters),
        "max_tokens": _positive(parameters, contract.REQUEST_PARAM_MAX_TOKENS),
        "max_chunks": _positive(parameters, contract.REQUEST_PARAM_MAX_CHUNKS) or 1,
        "keep_end": keep_end,
    }


def decode_pairs(
    query: np.ndarray | None,
    document: np.ndarray | None,
    instruction: np.ndarray | None,
    max_document_tokens: int | None = None,
    **options,
) -> list[Pair]:
    """Rows of query/document (and optional instruction) to pairs, row by row; `options` are the
    request's other `Pair` fields (`pair_options`).

    Triton already checks that the inputs share the batch size; the check here
    keeps the engine safe for any other caller.
    """
    if query is None or document is None:
        missing = contract.INPUT_QUERY if query is None else contract.INPUT_DOCUMENT
        raise InvalidRequest(f"input '{missing}' is required")
    queries = _texts(contract.INPUT_QUERY, query)
    documents = _texts(contract.INPUT_DOCUMENT, document)
    instructions = _texts(contract.INPUT_INSTRUCTION, instruction) if instruction is not None else None
    for name, values in ((contract.INPUT_QUERY, queries), (contract.INPUT_INSTRUCTION, instructions)):
        if values is not None and len(values) != len(documents):
            raise InvalidRequest(f"input '{name}' has {len(values)} rows; expected {len(documents)}, one per document")
    return [
        Pair(query, document, (instructions[i] or None) if instructions else None, max_document_tokens, **options)
        for i, (query, document) in enumerate(zip(queries, documents))
    ]
