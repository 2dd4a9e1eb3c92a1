"""Unit tests of the gateway's protocol models, settings and error table."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.errors import STATUS, ErrorKind
from gateway.api.protocol import RerankPairRequest, SwitchModelRequest
from gateway.settings import GatewaySettings
from rerank_engine import catalog


def test_pair_request_keeps_text_as_sent():
    request = RerankPairRequest(query=" 今天天气如何？ ", document="")
    assert request.query == " 今天天气如何？ " and request.document == ""


@pytest.mark.parametrize("query", ["", " ", "\n\t"])
def test_pair_request_refuses_blank_queries(query):
    with pytest.raises(ValidationError, match="non-whitespace"):
        RerankPairRequest(query=query, document="d")


def test_switch_request_needs_a_name():
    with pytest.raises(ValidationError):
        SwitchModelRequest(model_name="")


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("RERANKER_PORT", "9000")
    monkeypatch.setenv("RERANKER_TRITON_URL", "triton:8101")
    monkeypatch.setenv("RERANKER_MODEL_ALIASES", '{"tiny": "minilm-l6"}')
    settings = GatewaySettings()
    assert (settings.port, settings.triton_url, settings.model_aliases) == (9000, "triton:8101", {"tiny": "minilm-l6"})


def test_settings_defaults_match_the_seed():
    settings = GatewaySettings()
    assert settings.port == 8000
    assert settings.model_aliases == catalog.ALIASES
    assert {"bge", "qwen4b", "qwen8b", "minilm"} <= set(settings.model_aliases)


@pytest.mark.parametrize(("field", "value"), [("triton_url", "no-port"), ("port", "0"), ("log_level", "loud")])
def test_settings_are_validated_at_start_up(monkeypatch, field, value):
    monkeypatch.setenv(f"RERANKER_{field.upper()}", value)
    with pytest.raises(ValidationError, match=field):
        GatewaySettings()


def test_every_error_kind_has_a_status():
    assert set(STATUS) == set(ErrorKind)
    assert STATUS[ErrorKind.UNKNOWN_MODEL] == 400
    assert all(400 <= status < 600 for status in STATUS.values())
