"""The cluster on loopback with real processes: three tritonserver processes,
found through a real DNS server (tests/dns_server.py) that answers a name with
127.0.0.2-4, each Triton bound to its own address on the same ports, as pods
behind a Kubernetes headless Service; two gateways, the first the switch
coordinator. Concurrent clients score through both gateways while the model is
switched more than 20 times through alternating gateways (some through both at
once), one Triton is SIGKILLed and restarted, and a fourth joins the DNS
answer. Asserted: not one request fails; every score equals the engine's for
the model its response names; the gateways never disagree about the active
model for longer than the stated bound (settings.catch_up_bound_s); the
restarted and the joining Triton take requests again, after their models are
loaded."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import time

import httpx
import pytest

from gateway.settings import GatewaySettings
from launcher.process import free_ports
from rerank_engine.scoring import Pair
from tests import stack

# Each model load starts a python-backend stub that imports torch (8-30 s on 2 busy cores), and the
# test loads a model on four Tritons several times.
pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(1800)]

SWITCHES = 22
UNLOADING_SWITCHES = {1, 12}  # the others keep the previous model loaded: a switch without a load
KILL_AFTER, JOIN_AFTER = 4, 10
NAME = "triton.reranker.test"
ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
JOINER = "127.0.0.5"
PEER_KEY = "peer-secret-7f3a9c21e5"  # an admin key: what peer calls under /internal/ need once API keys are on
CLIENT_KEY = "client-secret-4b8d02e6f1"  # a score key: scoring only
API_KEYS = f"{PEER_KEY} admin peers; {CLIENT_KEY} score clients"
MODELS = {"minilm-l6": "minilm", "bge-reranker-base": "bge"}
QUERY = "what do giant pandas eat?"
DOCUMENTS = ["Giant pandas eat bamboo.", "The stock market closed higher.", "Pandas are bears from China.",
             "Bamboo grows fast in the mountains of Sichuan."]
BOUND_S = GatewaySettings().catch_up_bound_s  # the gateways run with the default poll interval and timeout


def served_requests(triton: stack.Process) -> int:
    """Successful inferences Triton counted, all models together (its Prometheus endpoint)."""
    text = httpx.get(f"{triton.url('metrics')}/metrics", timeout=5).text
    return int(sum(float(v) for v in re.findall(r"^nv_inference_request_success\{[^}]*\} (\S+)$", text, re.M)))


async def test_switches_kills_and_joins_across_replicas_fail_nothing(repository, models_dir, tmp_path):
    started_at = time.monotonic()
    expected = {
        model: [float(s) for s in stack.engine_scorer(repository, models_dir, model)
                .score([Pair(QUERY, d) for d in DOCUMENTS]).score]
        for model in MODELS
    }
    ports = tuple(free_ports(3))
    records = tmp_path / "dns.json"
    records.write_text(json.dumps({NAME: ADDRESSES}))
    processes: list[stack.Process] = []
    tritons: dict[str, stack.Process] = {}
    try:
        dns = stack.start_dns_server(records, tmp_path / "dns.log")
        processes.append(dns)
        for address in ADDRESSES:
            tritons[address] = stack.start_triton(repository, models_dir, tmp_path / f"triton-{address}.log", ports,
                                                  bind_address=address)
            processes.append(tritons[address])
        triton_url = f"dns://127.0.0.1:{dns.ports['dns']}/{NAME}:{ports[1]}"
        gateway_ports = free_ports(2)
        urls = [f"http://127.0.0.1:{port}" for port in gateway_ports]
        cluster_env = {"RERANKER_SWITCH_COORDINATOR": urls[0], "RERANKER_GATEWAY_PEERS": ",".join(urls),
                       "RERANKER_PEER_API_KEY": PEER_KEY, "RERANKER_API_KEYS": API_KEYS,
                       "RERANKER_TRITON_RESOLVE_INTERVAL_S": "1"}
        gateways = [stack.start_gateway(triton_url, tmp_path / f"gateway-{i}.log", model="minilm", port=port,
                                        env={**cluster_env, "RERANKER_ADVERTISED_URL": url}, wait=False)
                    for i, (port, url) in enumerate(zip(gateway_ports, urls))]
        processes.extend(gateways)
        for gateway in gateways:
            stack.wait_for(f"{gateway.url()}/health/ready", gateway.process, gateway.log, timeout_s=400)
        print(f"stack ready in {time.monotonic() - started_at:.0f} s")
        await _run(urls, expected, tritons, repository, models_dir, ports, records, tmp_path, processes)
    finally:
        for process in reversed(processes):
            stack.stop(process.process)
    print(f"test time {time.monotonic() - started_at:.0f} s")


async def _run(urls, expected, tritons, repository, models_dir, ports, records, tmp_path, processes) -> None:
    peer = {"Authorization": f"Bearer {PEER_KEY}"}
    counts = {"sent": 0, **{model: 0 for model in MODELS}}
    failures: list[str] = []
    samples: list[tuple[float, int, int, str]] = []  # (time, gateway, generation, model it serves)
    stop = asyncio.Event()
    served_before: dict[str, int] = {}

    client_key = {"Authorization": f"Bearer {CLIENT_KEY}"}
    async with httpx.AsyncClient(timeout=600, trust_env=False, headers=client_key) as http:
        # Peer calls are admin-only: no key is 401, a scoring key 403.
        refused = await http.get(f"{urls[1]}/internal/cluster", headers={"Authorization": ""})
        assert refused.status_code == 401 and refused.json()["error_type"] == "missing_api_key"
        forbidden = await http.get(f"{urls[1]}/internal/cluster")
        assert forbidden.status_code == 403 and forbidden.json()["error_type"] == "insufficient_scope"

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                url = urls[rng.randrange(2)]
                indexes = rng.sample(range(len(DOCUMENTS)), rng.randint(1, len(DOCUMENTS)))
                body = {"query": QUERY, "documents": [DOCUMENTS[i] for i in indexes]}
                counts["sent"] += 1
                try:
                    response = await http.post(f"{url}/v1/rerank", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"{url}: {type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    failures.append(f"{url}: {response.status_code}: {response.text[:300]}")
                    continue
                answer = response.json()
                counts[answer["model"]] += 1
                for result in answer["results"]:  # scored by the model the response names
                    want = expected[answer["model"]][indexes[result["index"]]]
                    if abs(result["relevance_score"] - want) > 1e-5:
                        failures.append(f"{answer['model']} gave {result['relevance_score']} for "
                                        f"{body['documents'][result['index']]!r}, the engine {want}")
                await asyncio.sleep(0.02)

        async def sampler() -> None:
            while not stop.is_set():
                for index, url in enumerate(urls):
                    try:
                        state = (await http.get(f"{url}/internal/cluster", headers=peer)).json()
                    except httpx.HTTPError as exc:
                        failures.append(f"{url}/internal/cluster: {type(exc).__name__}: {exc}")
                        continue
                    samples.append((time.monotonic(), index, state["generation"], state["serving"]))
                await asyncio.sleep(0.05)

        async def kill_and_restart(address: str) -> None:
            victim = tritons[address]
            served_before[address] = 0  # a restarted Triton counts from 0
            os.killpg(victim.process.pid, signal.SIGKILL)  # tritonserver and its model stubs, mid-load
            victim.process.wait()
            await asyncio.sleep(2)
            tritons[address] = await asyncio.to_thread(
                stack.start_triton, repository, models_dir, tmp_path / f"triton-{address}-restarted.log", ports,
                bind_address=address)
            processes.append(tritons[address])
            print(f"{address} restarted")

        async def join(address: str) -> None:
            tritons[address] = await asyncio.to_thread(
                stack.start_triton, repository, models_dir, tmp_path / f"triton-{address}.log", ports,
                bind_address=address)
            processes.append(tritons[address])
            served_before[address] = 0
            records.write_text(json.dumps({NAME: [*ADDRESSES, address]}))  # as a new ready pod in the Service
            print(f"{address} joined the DNS answer")

        tasks = [asyncio.create_task(client(seed)) for seed in range(4)] + [asyncio.create_task(sampler())]
        chaos: list[asyncio.Task] = []
        switches = calls = 0
        active = "minilm-l6"
        try:
            while switches < SWITCHES:
                target = "bge-reranker-base" if active == "minilm-l6" else "minilm-l6"
                keep = switches + 1 not in UNLOADING_SWITCHES
                # Every fourth switch goes through both gateways at once: queued at the coordinator, both succeed.
                through = urls if switches % 4 == 3 else [urls[switches % 2]]
                body = {"model_name": MODELS[target], "keep_loaded": keep}
                answers = await asyncio.gather(*(http.post(f"{url}/switch_model", json=body, headers=peer)
                                                 for url in through))
                assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
                assert {a.json()["model"] for a in answers} == {target}
                # The gateway that answered serves the new model already; so does the other, within the bound.
                switches += 1
                calls += len(through)
                active = target
                if switches == KILL_AFTER:
                    chaos.append(asyncio.create_task(kill_and_restart(ADDRESSES[1])))
                if switches == JOIN_AFTER:
                    chaos.append(asyncio.create_task(join(JOINER)))
                await asyncio.sleep(0.3)
            await asyncio.gather(*chaos)
            # The restarted and the joining Triton take requests once their models are loaded.
            deadline = time.monotonic() + 300
            while any(served_requests(tritons[a]) == 0 for a in (ADDRESSES[1], JOINER)):
                assert time.monotonic() < deadline, "the restarted or the joining Triton never took a request"
                await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in chaos:
                task.cancel()
        states = [(await http.get(f"{url}/internal/cluster", headers=peer)).json() for url in urls]

    lags = disagreements(samples)
    print(f"requests {counts['sent']}, failed {len(failures)}, served by minilm {counts['minilm-l6']}, by bge "
          f"{counts['bge-reranker-base']}; {switches} switches in {calls} calls; gateways disagreed at most "
          f"{max(lags, default=0):.3f} s (bound {BOUND_S:g} s) over {len(samples)} samples; "
          f"requests per Triton {[served_requests(t) for t in tritons.values()]}")
    assert failures == [], failures[:5]
    assert switches >= 20 and counts["minilm-l6"] > 0 and counts["bge-reranker-base"] > 0
    assert states[0]["generation"] == states[1]["generation"] and states[0]["serving"] == states[1]["serving"]
    assert states[0]["generation"] >= switches + 1  # the start-up activation, then one per switch
    assert lags and max(lags) <= BOUND_S, lags
    replicas = {r["address"].split(":")[0]: r for r in states[1]["replicas"]}
    assert set(replicas) == {*ADDRESSES, JOINER} and all(r["live"] for r in replicas.values())


def disagreements(samples: list[tuple[float, int, int, str]]) -> list[float]:
    """For each generation: from the first sample of any gateway serving it to the first sample by which every
    gateway serves it (or a later one). Generations never go back on a gateway, and both gateways serve the
    same model in the same generation."""
    first_seen: dict[tuple[int, int], float] = {}
    last_generation = {0: -1, 1: -1}
    model_of: dict[int, str] = {}
    for at, gateway, generation, model in samples:
        assert generation >= last_generation[gateway], f"gateway {gateway} went back to generation {generation}"
        assert model_of.setdefault(generation, model) == model, f"generation {generation}: {model}, {model_of}"
        last_generation[gateway] = generation
        for g in range(1, generation + 1):
            first_seen.setdefault((gateway, g), at)
    generations = {g for _, g in first_seen}
    return [max(first_seen[(0, g)], first_seen[(1, g)]) - min(first_seen[(0, g)], first_seen[(1, g)])
            for g in sorted(generations) if (0, g) in first_seen and (1, g) in first_seen]
