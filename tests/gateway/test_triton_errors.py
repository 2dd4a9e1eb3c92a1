"""How Triton's failures become the gateway's answers."""

from __future__ import annotations

import pytest
from tritonclient.grpc import InferenceServerException

from gateway.errors import STATUS, ErrorKind, field_path
from gateway.serving.triton import _translate, classify


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


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        # The code decides where it can; the same words under another code change nothing.
        ("StatusCode.INVALID_ARGUMENT", "Exceeds maximum queue size", ErrorKind.INVALID_REQUEST),
        ("StatusCode.RESOURCE_EXHAUSTED", "anything", ErrorKind.OVERLOADED),
        ("StatusCode.UNIMPLEMENTED", "is not ready", ErrorKind.BACKEND_ERROR),
        # UNAVAILABLE covers several conditions; the fallback table tells them apart, case-insensitively.
        ("StatusCode.UNAVAILABLE", "Request timeout expired", ErrorKind.BACKEND_TIMEOUT),
        ("StatusCode.UNAVAILABLE", "Model 'bge' is not READY", ErrorKind.MODEL_NOT_READY),
        ("StatusCode.UNAVAILABLE", "Socket closed", ErrorKind.BACKEND_UNAVAILABLE),
    ],
)
def test_the_status_code_comes_first(status, message, kind):
    assert classify(status, message) is kind


@pytest.mark.parametrize(
    ("location", "field"),
    [
        (("body", "documents", 0, "function-after[_clean(), str]"), "documents[0]"),
        (("body", "documents", 0, "RerankDocument", "text"), "documents[0].text"),
        (("body", "list-form", "top_n"), "top_n"),
        (("body",), "body"),
        (("body", "text_2", "list[function-after[_clean(), str]]", 3), "text_2[3]"),
    ],
)
def test_validation_locations_read_as_the_body_is_written(location, field):
    assert field_path(location) == field


def test_an_unknown_field_is_named():
    assert field_path(("body", "pair-form", "surprise"), unknown=True) == "surprise"
    assert field_path(("body", "documents", 0, "RerankDocument", "colour"), unknown=True) == "documents[0].colour"
