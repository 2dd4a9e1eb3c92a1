"""End-to-end tests: the real `tritonserver` and the real gateway as separate
processes, driven through the project's Python client over HTTP."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from client import AsyncRerankerClient, RerankerClient, RerankerError
from rerank_engine.scoring import Pair
from tests import stack

pytestmark = pytest.mark.integration

PAIRS = [
    Pair("what is a panda?", "The giant panda is a bear species endemic to China."),
    Pair("今天天气如何？", "今天晴天适合外出游玩"),
    Pair("capital of France 🇫🇷", "Paris is the capital and most populous city of France. " * 40),
]


@pytest.fixture(scope="module")
def gateway(triton, tmp_path_factory):
    process = stack.start_gateway(triton.ports["grpc"], tmp_path_factory.mktemp("gw") / "gateway.log")
    yield process
    stack.stop(process.process)


@pytest.fixture(scope="module")
def client(gateway):
    with RerankerClient(gateway.url(), timeout=300) as c:
        yield c


@pytest.mark.parametrize(
    ("alias", "model"),
    [("bge", "bge-reranker-base"), ("qwen4b", "qwen3-reranker-4b"), ("qwen8b", "qwen3-reranker-8b"),
     ("minilm", "minilm-l6")],
)
def test_switch_then_scores_equal_the_engine(client, repository, models_dir, alias, model):
    previous = client.models()["active"]
    answer = client.switch_model(alias)
    assert answer["message"] == f"Switched to model {alias}"
    assert answer["model"] == model and answer["previous"] == previous
    models = client.models()
    assert models["active"] == model
    assert model in models["loaded"]
    if previous != model:
        assert previous not in models["loaded"]  # the old model was unloaded
    expected = stack.engine_scorer(repository, models_dir, model).score(PAIRS).score
    served = [client.rerank(p.query, p.document) for p in PAIRS]
    assert served == pytest.approx([float(x) for x in expected], abs=1e-6)


def test_the_tiny_models_tell_pairs_apart(client):
    # Guards the equality test above against degenerate models that score everything alike.
    client.switch_model("bge")
    scores = {round(client.rerank(p.query, p.document), 4) for p in PAIRS}
    assert len(scores) == len(PAIRS)


def test_switch_by_full_name_and_to_the_active_model(client):
    client.switch_model("qwen3-reranker-4b")
    again = client.switch_model("qwen4b")
    assert again["model"] == "qwen3-reranker-4b" and again["load_time_s"] == 0
    assert client.models()["loaded"].count("qwen3-reranker-4b") == 1


def test_failed_switch_keeps_serving(client):
    client.switch_model("minilm")
    before = client.rerank("q", "d")
    with pytest.raises(RerankerError) as error:
        client.switch_model("missing-weights")
    assert error.value.status == 503 and error.value.error_type == "model_load_failed"
    assert client.models()["active"] == "minilm-l6"
    assert client.rerank("q", "d") == before


@pytest.mark.anyio
async def test_async_client(gateway):
    async with AsyncRerankerClient(gateway.url(), timeout=300) as client:
        await client.switch_model("minilm")
        score = await client.rerank(PAIRS[0].query, PAIRS[0].document)
        assert 0.0 < score <= 1.0
        assert (await client.health())["status"] == "ok"
        with pytest.raises(RerankerError) as error:
            await client.switch_model("no-such-model")
        assert error.value.status == 400


def test_serve_runs_both_and_ctrl_c_leaves_no_process(repository, models_dir, tmp_path):
    serve = stack.start_serve(repository, models_dir, tmp_path / "serve.log")
    children = psutil.Process(serve.process.pid).children(recursive=True)
    names = " ".join(p.name() for p in children)
    assert "tritonserver" in names and "triton_python_backend_stub" in names
    with RerankerClient(serve.url()) as client:
        assert client.rerank("q", "d") == pytest.approx(client.rerank("q", "d"))
        assert client.models()["active"] == "minilm-l6"
    assert stack.stop(serve.process, signal.SIGINT) == 0  # a terminal's Ctrl-C
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], f"left running after Ctrl-C: {alive}"


def test_serve_starts_a_dead_triton_again_and_the_gateway_recovers(repository, models_dir, tmp_path):
    serve = stack.start_serve(repository, models_dir, tmp_path / "serve.log")
    try:
        with RerankerClient(serve.url()) as client:
            before = client.rerank("what do pandas eat?", "bamboo")
            (first,) = [p for p in psutil.Process(serve.process.pid).children() if p.name() == "tritonserver"]
            os.killpg(first.pid, signal.SIGKILL)  # the server and its stubs, as an OOM kill would
            deadline = time.monotonic() + 180
            while True:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                servers = [p for p in psutil.Process(serve.process.pid).children() if p.name() == "tritonserver"]
                if servers and servers[0].pid != first.pid and client.health()["status"] == "ok":
                    break
                time.sleep(0.5)
            assert client.rerank("what do pandas eat?", "bamboo") == before
    finally:
        assert stack.stop(serve.process, signal.SIGINT) == 0
