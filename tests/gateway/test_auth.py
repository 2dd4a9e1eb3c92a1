"""API keys without a server: the key format, constant-time lookup, and the
scope every route of the app declares."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from gateway.api import auth
from gateway.app import create_app
from gateway.api.auth import KeyConfigError, KeyRing, Scope, parse_keys
from gateway.settings import GatewaySettings

SCORE_KEY = "sk-score-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"


def test_the_documented_format_with_comments_names_and_hashed_keys():
    hashed = hashlib.sha256(b"a-secret-only-the-client-has").hexdigest()
    text = f"""
# Reranker API keys
{SCORE_KEY}   score            search-frontend   # the web search box
{ADMIN_KEY}   admin            ops
sha256:{hashed.upper()}  score,metrics  # hashed: the file never holds the secret
   # an indented comment

"""
    keys = parse_keys(text, "keys.txt")
    assert [k.name for k in keys] == ["search-frontend", "ops", "keys.txt, entry 5"]
    assert keys[0].scopes == {Scope.SCORE}
    assert keys[1].scopes == {Scope.SCORE, Scope.ADMIN, Scope.METRICS}  # admin grants the others
    assert keys[2].scopes == {Scope.SCORE, Scope.METRICS}
    ring = KeyRing(keys)
    assert ring.find(SCORE_KEY).name == "search-frontend"
    assert ring.find("a-secret-only-the-client-has") is keys[2]
    assert ring.find(SCORE_KEY + "x") is None and ring.find("") is None
    assert ring.find(hashed) is None  # the hash is not itself a key


def test_a_hash_inside_a_key_is_part_of_it():
    (key,) = parse_keys("abc#def0123456789xyz score", "env")
    assert key.digest == hashlib.sha256(b"abc#def0123456789xyz").digest()


@pytest.mark.parametrize(("text", "message"), [
    ("short score", "shorter than 16 characters"),
    (f"{SCORE_KEY} write", "unknown scope 'write' (valid: score, admin, metrics)"),
    (f"{SCORE_KEY}", "expected '<key> <scopes> [<name>]', got 1 fields"),
    (f"{SCORE_KEY} score name extra", "got 4 fields"),
    ("sha256:abcd score", "a sha256: key must be 64 hex digits"),
])
def test_bad_entries_stop_the_start_naming_the_entry(text, message):
    with pytest.raises(KeyConfigError) as error:
        parse_keys(f"# first line\n{text}\n", "/etc/reranker/keys/api-keys")
    assert "/etc/reranker/keys/api-keys, entry 2" in str(error.value) and message in str(error.value)


def test_the_same_key_twice_is_refused():
    with pytest.raises(KeyConfigError, match="the same key as"):
        KeyRing(parse_keys(f"{SCORE_KEY} score a\n{SCORE_KEY} admin b", "keys"))


def test_keys_from_the_file_and_the_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / "api-keys"
    path.write_text(f"{SCORE_KEY} score frontend\n")
    monkeypatch.setenv("RERANKER_API_KEYS_FILE", str(path))
    monkeypatch.setenv("RERANKER_API_KEYS", f"{ADMIN_KEY} admin ops; sk-metrics-0123456789abcdef metrics prom")
    ring = KeyRing.from_settings(GatewaySettings())
    assert [k.name for k in ring.keys] == ["frontend", "ops", "prom"]
    assert "sk-" not in repr(GatewaySettings().api_keys)  # a secret in the settings is never printed
    monkeypatch.setenv("RERANKER_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(KeyConfigError, match="missing: No such file"):
        KeyRing.from_settings(GatewaySettings())


def test_empty_settings_mean_no_keys(monkeypatch):
    monkeypatch.setenv("RERANKER_API_KEYS_FILE", "")
    monkeypatch.setenv("RERANKER_API_KEYS", " ")
    assert not KeyRing.from_settings(GatewaySettings())


def test_the_lookup_compares_every_key_whatever_matches(monkeypatch):
    """Constant time: the first key matching must cost what the last one (or none) does."""
    ring = KeyRing(parse_keys("\n".join(f"sk-key-{i:02d}-0123456789abcdef score" for i in range(10)), "keys"))
    compared = []
    real = hmac.compare_digest

    def counting(a, b):
        compared.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for secret in ("sk-key-00-0123456789abcdef", "sk-key-09-0123456789abcdef", "no such key at all here"):
        compared.clear()
        ring.find(secret)
        assert len(compared) == 10, secret


# --- the routes' declared scopes --------------------------------------------------------------------

EXPECTED = {
    ("POST", "/rerank"): Scope.SCORE, ("POST", "/v1/rerank"): Scope.SCORE, ("POST", "/v2/rerank"): Scope.SCORE,
    ("POST", "/v1/score"): Scope.SCORE, ("POST", "/score"): Scope.SCORE, ("POST", "/invocations"): Scope.SCORE,
    ("GET", "/models"): Scope.SCORE,
    ("GET", "/v1/models"): Scope.SCORE, ("POST", "/switch_model"): Scope.ADMIN,
    ("GET", "/metrics"): Scope.METRICS, ("GET", "/health"): None, ("GET", "/health/ready"): None,
}


def app_routes(app):
    """(method, path, declared scope) of every route of the app, included routers flattened."""
    return [(method, matched.path, auth.declared_scope(declared))
            for matched, declared in auth.flat_routes(app.routes)
            for method in (getattr(matched, "methods", None) or {"GET"})]  # a Mount (static files) has none


def test_every_route_of_the_app_declares_its_scope():
    app = create_app(GatewaySettings())
    routes = app_routes(app)
    assert routes, "no routes found"
    for method, path, scope in routes:
        assert scope is not auth.UNDECLARED, f"{method} {path} declares no scope"
        if path.startswith("/internal/"):
            assert scope is Scope.ADMIN, f"{method} {path}: peer-only routes need the admin scope"
        if (method, path) in EXPECTED:
            assert scope is EXPECTED[(method, path)], f"{method} {path}: {scope}"
        elif path not in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs-assets"):
            # A route added later must choose a scope on purpose: score or admin, public only for probes.
            assert scope in (Scope.SCORE, Scope.ADMIN), f"{method} {path} is public: add it to the expected table"
    assert set(EXPECTED) <= {(m, p) for m, p, _ in routes}


def test_an_app_with_a_route_on_no_scoped_router_refuses_to_start():
    app = create_app(GatewaySettings())

    @app.post("/internal/forgotten")
    async def forgotten() -> dict:
        return {}

    with pytest.raises(RuntimeError, match=r"routes without a declared scope.*/internal/forgotten"):
        auth.check_declared(app)


def test_an_undeclared_route_needs_admin_at_run_time_too():
    class Bare:
        pass

    assert auth.AccessPolicy(GatewaySettings()).needed(Bare()) is Scope.ADMIN


def test_metrics_need_a_key_only_when_the_setting_says_so():
    route = auth.scoped_route_class(Scope.METRICS)
    assert auth.AccessPolicy(GatewaySettings()).needed(route) is None
    assert auth.AccessPolicy(GatewaySettings(metrics_require_key=True)).needed(route) is Scope.METRICS


def test_the_readme_example_key_file_reads_as_documented():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```text\n# Reranker API keys:", 1)[1].split("```", 1)[0]
    keys = parse_keys("#" + block, "README")
    assert [(k.name, k.scopes) for k in keys] == [
        ("search-frontend", {Scope.SCORE}), ("ops", set(Scope)), ("prometheus", {Scope.METRICS})]
