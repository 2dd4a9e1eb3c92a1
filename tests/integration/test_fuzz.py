"""Schemathesis against the live gateway's own OpenAPI document: generated
valid and invalid requests to every operation, `/switch_model` included, on a
Triton and gateway of this module's own (switches change which models Triton
holds, which the session's Triton must not see), with API keys on.

Every generated request goes with an admin key: not one answer may be a 5xx;
every 4xx is the project's JSON error shape; status codes, content types and
bodies conform to the documented schema, and schema-invalid requests are
rejected. The same request without a key, with a wrong key, and (where the
route needs admin) with a score key must be refused with 401 or 403: no route
is reachable without its scope. Afterwards the stack still serves correct
scores."""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance, status_code_conformance

from gateway.api import auth
from gateway.app import create_app
from gateway.settings import GatewaySettings
from rerank_engine.scoring import Pair
from tests import stack

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("RERANKER_FUZZ_EXAMPLES", "40"))
"""Generated cases per operation, besides the schema's examples and coverage cases; the default keeps the
module near a minute on 2 cores."""

ERROR_KEYS = {"error", "error_type", "field", "detail"}  # detail: the message again, for FastAPI and Jina clients
GUARD_STATUSES = {413, 415, 429}
"""Answered by gateway/api/guards.py before any route, and in README's error table, but not in the OpenAPI."""
SCORING = ("POST /rerank", "POST /v1/rerank", "POST /v2/rerank", "POST /v1/score")

answers: defaultdict[str, Counter[int]] = defaultdict(Counter)
"""Status codes seen per operation, to show the fuzzing reached the models and not only the validators."""

KEYS = {"admin": "sk-fuzz-admin-0123456789abcdef0123", "score": "sk-fuzz-score-0123456789abcdef0123"}
ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}  # the spelling schemathesis's ignored_auth check removes
SCOPES = {f"{method} {matched.path}": auth.AccessPolicy(GatewaySettings()).needed(declared)
          for matched, declared in auth.flat_routes(create_app(GatewaySettings()).routes)
          for method in (getattr(matched, "methods", None) or ())}  # a Mount (static files) has none
"""The scope each operation needs, from the routes' own declarations."""


@pytest.fixture(scope="module")
def fuzz_stack(repository, models_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("fuzz")
    triton = stack.start_triton(repository, models_dir, logs / "triton.log")
    try:
        keys = "; ".join(f"{secret} {scope}" for scope, secret in KEYS.items())
        gateway = stack.start_gateway(triton.ports["grpc"], logs / "gateway.log", env={"RERANKER_API_KEYS": keys})
        try:
            yield gateway
        finally:
            stack.stop(gateway.process)
    finally:
        stack.stop(triton.process)


@pytest.fixture(scope="module")
def gateway_schema(fuzz_stack):
    return schemathesis.openapi.from_url(f"{fuzz_stack.url()}/openapi.json")


def error_shape(ctx, response, case) -> None:
    """Every refusal is `{"error": str, "error_type": str, "field"?: str}`, nothing more."""
    if response.status_code < 400:
        return
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body, dict) and {"error", "error_type"} <= body.keys() <= ERROR_KEYS, body
    assert isinstance(body["error"], str) and body["error"] and isinstance(body["error_type"], str), body
    assert isinstance(body.get("field", ""), str), body


@pytest.fixture(autouse=True)
def node_id_for_schemathesis(request):
    # schemathesis's from_fixture reads Node._nodeid, which pytest 9.2 replaced with a structured id.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def documented_status(ctx, response, case) -> None:
    """schemathesis's status_code_conformance, with the guards' refusals allowed too."""
    if response.status_code not in GUARD_STATUSES:
        status_code_conformance(ctx, response, case)


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_documented_answers(case):
    # positive_data_acceptance is left out: the schema cannot say "a query with a non-whitespace
    # character" or "a model that is loaded", so some schema-valid bodies are rightly refused with 4xx.
    response = case.call_and_validate(
        headers=ADMIN,
        timeout=60,
        additional_checks=[error_shape, documented_status],
        excluded_checks=[positive_data_acceptance, status_code_conformance],
    )
    answers[case.operation.label][response.status_code] += 1
    needed = SCOPES[case.operation.label]
    if needed is None or case.method.upper() != case.operation.method.upper():
        return  # public, or a method no route takes (405 whoever asks: nothing is reached)
    # A generated case may carry an Authorization header of its own (schemathesis tests the security scheme);
    # the refusals below send exactly one: theirs.
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    for secret in [None, "sk-fuzz-wrong-0123456789abcdef0123", *([KEYS["score"]] if needed is auth.Scope.ADMIN else [])]:
        refused = case.call(headers={"Authorization": f"Bearer {secret}"} if secret else {}, timeout=60)
        # Cases that test a missing Authorization header go without one, whatever is passed.
        sent = refused.request.headers.get("Authorization")
        status = 403 if sent == f"Bearer {KEYS['score']}" else 401
        assert refused.status_code == status, (case.operation.label, sent and sent[:19], refused.text)
        error_shape(None, refused, case)
        answers[f"{case.operation.label} refused"][refused.status_code] += 1


def test_the_fuzzed_stack_still_scores_correctly(fuzz_stack, repository, models_dir):
    if answers:  # the fuzz test ran first in this session
        print("FUZZ:", "; ".join(f"{label} {dict(sorted(codes.items()))}" for label, codes in sorted(answers.items())))
        for label in SCORING:
            assert answers[label][200] > 0 and sum(n for code, n in answers[label].items() if code >= 400) > 0, label
            assert answers[f"{label} refused"][401] > 0, label
        assert answers["POST /switch_model refused"][403] > 0  # a score key was tried on the admin route
    pair = Pair("what do giant pandas eat?", "Giant pandas eat bamboo.")
    with httpx.Client(base_url=fuzz_stack.url(), timeout=60, headers=ADMIN) as client:
        assert client.post("/switch_model", json={"model_name": "minilm"}).status_code == 200
        assert client.get("/health/ready").status_code == 200
        score = client.post("/rerank", json={"query": pair.query, "document": pair.document}).json()["score"]
    expected = stack.engine_scorer(repository, models_dir, "minilm-l6").score([pair]).score[0]
    assert score == pytest.approx(float(expected), abs=1e-5)
