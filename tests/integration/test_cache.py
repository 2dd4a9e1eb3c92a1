"""The score cache on the real stack: 20 model switches under concurrent load
with a reload of changed weights under the same name at every other switch,
every score checked against the engine and not one stale; Redis killed and
restarted mid-load with not one failed request; and two gateways sharing one
Redis."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import httpx
import pytest

from gateway.settings import GatewaySettings
from rerank_engine.scoring import Pair
from tests import stack
from tests.app.conftest import in_process
from tests.tiny_models import build_tiny_bge, link_minilm

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

QUERIES = ["what do giant pandas eat?", "where is the eiffel tower?", "how do bears spend the winter?"]
DOCUMENTS = [f"Document {i}: {topic}" for i, topic in enumerate(
    ["Giant pandas eat bamboo.", "The Eiffel tower is in Paris.", "Bears hibernate in dens.",
     "Bamboo grows fast.", "Paris has many bridges.", "Pandas live in Sichuan.", "Winter is cold in the north.",
     "Brown bears eat salmon.", "The Seine flows through Paris.", "Red pandas are not bears."] * 3)]
SEEDS = {"A": 0, "B": 1}
SWITCHES = 20


def expected_scores(repository, models_dir, model: str) -> dict[tuple[str, str], float]:
    scorer = stack.engine_scorer(repository, models_dir, model)
    pairs = [Pair(q, d) for q in QUERIES for d in DOCUMENTS]
    return {(p.query, p.document): float(s) for p, s in zip(pairs, scorer.score(pairs).score)}


def point_bge_at(models_dir, seed: str) -> None:
    """Swap the bge weights folder for the other seed's, atomically (a symlink replaced)."""
    link = models_dir / "bge-reranker-base"
    scratch = models_dir / "bge-reranker-base.next"
    os.symlink(models_dir.parent / f"bge-{seed}", scratch, target_is_directory=True)
    os.replace(scratch, link)


@pytest.fixture(scope="module")
def switching_stack(repository, tmp_path_factory):
    """A Triton of its own, whose bge weights the test changes between loads."""
    root = tmp_path_factory.mktemp("cache-switch")
    models_dir = root / "models"
    models_dir.mkdir()
    for name, seed in SEEDS.items():
        build_tiny_bge(root / f"bge-{name}", seed=seed)
    link_minilm(models_dir / "all-MiniLM-L6-v2")
    expected = {"minilm-l6": expected_scores(repository, models_dir, "minilm-l6")}
    for name in SEEDS:
        point_bge_at(models_dir, name)
        expected[name] = expected_scores(repository, models_dir, "bge-reranker-base")
    # The two weights must tell every pair apart, or a stale score could pass for a right one.
    assert all(abs(expected["A"][pair] - expected["B"][pair]) > 1e-4 for pair in expected["A"])
    point_bge_at(models_dir, "A")
    triton = stack.start_triton(repository, models_dir, root / "triton.log")
    redis = stack.start_redis(root)
    yield triton, redis, models_dir, expected
    stack.stop(redis.process)
    stack.stop(triton.process)


@pytest.mark.slow
@pytest.mark.timeout(2400)
async def test_twenty_switches_with_reloaded_weights_under_load_serve_no_stale_score(switching_stack, repository):
    triton, redis, models_dir, expected = switching_stack
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm", cache=True,
                               cache_url=redis.url("redis"), cache_secret="a-shared-secret")
    bge_epochs: list[list] = []  # [seed, started, ended]: while bge with these weights may answer
    results: list[tuple[float, float, str, dict, int]] = []  # start, end, model, scores by pair, hits
    failures: list[str] = []
    stop = asyncio.Event()

    async with in_process(settings) as api:
        async def client(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                query = rng.choice(QUERIES)
                documents = rng.sample(DOCUMENTS, rng.randint(3, 12))
                started = time.monotonic()
                response = await api.post("/v1/rerank", json={"query": query, "documents": documents})
                ended = time.monotonic()
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:300]}")
                    continue
                body = response.json()
                scores = {(query, documents[r["index"]]): r["relevance_score"] for r in body["results"]}
                results.append((started, ended, body["model"], scores, int(response.headers["x-cache-hits"])))
                # An all-hit answer through ASGITransport never waits on a socket: without this, six such
                # clients would keep the event loop from ever running the switches.
                await asyncio.sleep(0)

        async def switch(model: str) -> None:
            answer = await api.post("/switch_model", json={"model_name": model})
            assert answer.status_code == 200, answer.text

        clients = [asyncio.create_task(client(seed)) for seed in range(6)]
        try:
            for number in range(SWITCHES):
                if number % 2 == 0:  # minilm -> bge, with the weights on disk now
                    seed = "A" if number % 4 == 0 else "B"
                    bge_epochs.append([seed, time.monotonic(), None])
                    await switch("bge")
                else:  # bge -> minilm: bge is unloaded when this returns, and its weights change
                    await switch("minilm")
                    bge_epochs[-1][2] = time.monotonic()
                    point_bge_at(models_dir, "B" if bge_epochs[-1][0] == "A" else "A")
                await asyncio.sleep(2.0)  # traffic on the new model, hits included
        finally:
            stop.set()
            await asyncio.gather(*clients)

    stale, wrong, hits = 0, [], {"minilm-l6": 0, "A": 0, "B": 0}
    for started, ended, model, scores, cached in results:
        if model == "minilm-l6":
            allowed = ["minilm-l6"]
        else:  # the weights of every bge epoch the request overlapped
            allowed = [seed for seed, begin, end in bge_epochs if begin <= ended and (end is None or end >= started)]
        matches = [name for name in allowed if all(abs(s - expected[name][pair]) <= 1e-5 for pair, s in scores.items())]
        if not matches:
            other = [name for name in ("A", "B") if name not in allowed and model != "minilm-l6"
                     and all(abs(s - expected[name][pair]) <= 1e-5 for pair, s in scores.items())]
            stale += bool(other)
            wrong.append(f"{model} (allowed {allowed}, matches {other}): {scores}")
        elif len(allowed) == 1:
            hits[allowed[0]] += cached
    print(f"{len(results)} requests, {SWITCHES} switches, bge epochs {[e[0] for e in bge_epochs]}, hits {hits}, "
          f"stale {stale}, wrong {len(wrong)}")
    assert failures == [], failures[:5]
    assert stale == 0 and wrong == [], wrong[:5]
    assert len(bge_epochs) == SWITCHES // 2
    assert all(count > 0 for count in hits.values()), hits  # the cache answered under each of the three


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_redis_killed_and_restarted_mid_load_fails_no_request(triton, repository, models_dir, tmp_path):
    expected = expected_scores(repository, models_dir, "minilm-l6")
    redis = stack.start_redis(tmp_path)
    # Redis only (no in-process tier), so that every hit comes from Redis and its outage shows in them.
    env = {"RERANKER_CACHE_URL": redis.url("redis"), "RERANKER_CACHE_MAX_BYTES": "0",
           "RERANKER_CACHE_SECRET": "a-shared-secret", "RERANKER_CACHE_REDIS_RETRY_S": "1"}
    gateways = [stack.start_gateway(triton.ports["grpc"], tmp_path / f"gateway-{i}.log", env=env) for i in range(2)]
    outage: list[float] = []
    samples: list[tuple[float, int, bool]] = []  # when answered, hits, right
    failures: list[str] = []
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            async def post(gateway, query, documents):
                response = await http.post(f"{gateway.url()}/v1/rerank", json={"query": query, "documents": documents})
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text[:300]}")
                    return None
                body = response.json()
                right = all(abs(r["relevance_score"] - expected[(query, documents[r["index"]])]) <= 1e-5
                            for r in body["results"])
                samples.append((time.monotonic(), int(response.headers["x-cache-hits"]), right))
                return response

            # Two gateways, one Redis: what one scored, the other answers from it (once it has confirmed the
            # model's fingerprint with a response of its own).
            await post(gateways[0], QUERIES[0], DOCUMENTS[:10])
            await post(gateways[0], QUERIES[0], DOCUMENTS[:10])
            await asyncio.sleep(0.5)  # Redis writes go in the background
            await post(gateways[1], QUERIES[1], DOCUMENTS[:1])
            shared = await post(gateways[1], QUERIES[0], DOCUMENTS[:10])
            assert shared is not None and shared.headers["x-cache-hits"] == "10"

            stop = asyncio.Event()

            async def client(seed: int) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    await post(gateways[seed % 2], rng.choice(QUERIES), rng.sample(DOCUMENTS, rng.randint(3, 12)))

            clients = [asyncio.create_task(client(seed)) for seed in range(8)]
            try:
                await asyncio.sleep(4)
                outage.append(time.monotonic())
                os.kill(redis.process.pid, signal.SIGKILL)  # no shutdown: connections drop mid-command
                redis.process.wait()
                await asyncio.sleep(4)
                redis = stack.start_redis(tmp_path, port=redis.ports["redis"])
                outage.append(time.monotonic())
                await asyncio.sleep(6)
            finally:
                stop.set()
                await asyncio.gather(*clients)
    finally:
        for gateway in gateways:
            stack.stop(gateway.process)
        stack.stop(redis.process)
    before = [hits for at, hits, _ in samples if at < outage[0]]
    during = [hits for at, hits, _ in samples if outage[0] + 0.5 < at < outage[1]]
    after = [hits for at, hits, _ in samples if at > outage[1] + 2.5]
    print(f"{len(samples)} requests; hits before {sum(before)}/{len(before)} requests, during {sum(during)}/"
          f"{len(during)}, after {sum(after)}/{len(after)}")
    assert failures == [], failures[:5]
    assert all(right for _, _, right in samples)
    assert sum(before) > 0 and len(during) > 0 and sum(during) == 0 and sum(after) > 0
    for index in range(2):
        log = (tmp_path / f"gateway-{index}.log").read_text()
        assert log.count("the score cache goes on without it") == 1, log[-3000:]
        assert log.count("the score cache uses it again") == 1
