"""Hot switching while traffic flows: clients keep scoring while the model is
switched back and forth (with some concurrent switch calls), and not one
request fails or is scored by a model other than the one it reports."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.settings import GatewaySettings
from rerank_engine.scoring import Pair
from tests import stack
from tests.app.conftest import in_process

# Every switch starts a fresh python-backend stub that imports torch and transformers and loads
# the weights: 8-15 s on 2 busy CPU cores, so 50 switches need more than the default 600 s.
pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(1800)]

SWITCHES = 50
QUERY = "what do giant pandas eat?"
DOCUMENTS = ["Giant pandas eat bamboo.", "The stock market closed higher.", "Pandas are bears from China."]


async def test_fifty_switches_under_load_fail_nothing(triton, repository, models_dir):
    expected = {
        model: [float(s) for s in stack.engine_scorer(repository, models_dir, model)
                .score([Pair(QUERY, d) for d in DOCUMENTS]).score]
        for model in ("minilm-l6", "bge-reranker-base")
    }
    settings = GatewaySettings(triton_url=f"127.0.0.1:{triton.ports['grpc']}", default_model="minilm")
    counts = {"sent": 0, "failed": 0, "minilm-l6": 0, "bge-reranker-base": 0}
    failures: list[str] = []
    load_times: list[float] = []
    stop = asyncio.Event()

    async with in_process(settings) as api:
        async def client(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                index = rng.randrange(len(DOCUMENTS))
                response = await api.post("/v1/rerank", json={"query": QUERY, "documents": [DOCUMENTS[index]]})
                counts["sent"] += 1
                body = response.json()
                if response.status_code != 200:
                    counts["failed"] += 1
                    failures.append(f"{response.status_code}: {body}")
                    continue
                counts[body["model"]] += 1
                score = body["results"][0]["relevance_score"]
                if abs(score - expected[body["model"]][index]) > 1e-5:  # scored by the model it names
                    counts["failed"] += 1
                    failures.append(f"{body['model']} gave {score} for document {index}")

        clients = [asyncio.create_task(client(seed)) for seed in range(8)]
        switches, calls, active = 0, 0, "minilm-l6"
        try:
            while switches < SWITCHES:
                target = "bge-reranker-base" if active == "minilm-l6" else "minilm-l6"
                # Every fifth time, two calls at once: serialised, one switches, both answer the same model.
                ways = 2 if calls % 5 == 4 else 1
                answers = await asyncio.gather(
                    *(api.post("/switch_model", json={"model_name": target}) for _ in range(ways))
                )
                assert all(a.status_code == 200 for a in answers), [a.json() for a in answers]
                assert {a.json()["model"] for a in answers} == {target}
                load_times.extend(a.json()["load_time_s"] for a in answers if a.json()["load_time_s"])
                switches += sum(a.json()["previous"] != a.json()["model"] for a in answers)
                calls, active = calls + ways, target
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        await api.post("/switch_model", json={"model_name": "minilm"})

    print(f"requests sent {counts['sent']}, failed {counts['failed']}, switches {switches} in {calls} calls, "
          f"served by minilm {counts['minilm-l6']}, by bge {counts['bge-reranker-base']}, "
          f"median load {sorted(load_times)[len(load_times) // 2]:.1f} s")
    assert failures == [], failures[:5]
    assert switches >= SWITCHES
    assert counts["minilm-l6"] > 0 and counts["bge-reranker-base"] > 0
