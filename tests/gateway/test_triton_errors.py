"""How Triton's failures become the gateway's answers."""

from __future__ import annotations

import pytest
from tritonclient.grpc import InferenceServerException

from gateway.errors import STATUS, ErrorKind
from gateway.triton import _translate


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("StatusCode.UNAVAILABLE", "Exceeds maximum queue size", ErrorKind.OVERLOADED),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ErrorKind.BACKEND_UNAVAILABLE),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", ErrorKind.BACKEND_TIMEOUT),
        ("StatusCode.INVALID_ARGUMENT", "input 'document' row 1 is not valid UTF-8", ErrorKind.INVALID_REQUEST),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'bge' is not found", ErrorKind.MODEL_NOT_READY),
        ("StatusCode.INTERNAL", "Stub process is not healthy.", ErrorKind.BACKEND_ERROR),
    ],
)
def test_triton_errors_map_to_kinds(status, message, kind):
    error = _translate(InferenceServerException(msg=message, status=status), "scoring with bge")
    assert error.kind is kind and message in error.message and error.message.startswith("scoring with bge")


def test_queue_full_is_429_and_outage_is_503():
    assert STATUS[ErrorKind.OVERLOADED] == 429 and STATUS[ErrorKind.BACKEND_UNAVAILABLE] == 503


def test_the_python_traceback_is_cut_from_messages():
    raw = "load failed: WeightsNotFoundError: folder missing\n\nAt:\n  /x/model.py(27): initialize\n"
    error = _translate(InferenceServerException(msg=raw, status="StatusCode.INTERNAL"), "loading bge")
    assert error.message == "loading bge: load failed: WeightsNotFoundError: folder missing"
