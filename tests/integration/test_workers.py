"""`reranker gateway` with two worker processes on one port, in front of the session's real Triton:
the workers score like the engine under a mixed stream, agree on the active model, keep answering when
a client goes away or a neighbour's request is bad, and their metrics add up."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from rerank_engine.scoring import Pair
from tests import stack

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(900)]

QUERY = "what do giant pandas eat?"
DOCUMENTS = ["Giant pandas eat bamboo.", "The stock market closed higher.", "Pandas are bears from China.",
             "Bamboo forests cover the mountains of Sichuan.", "A panda spends half its day eating."]


@pytest.fixture(scope="module")
def workers(triton, tmp_path_factory):
    """The gateway's public URL and each worker's own (internal) URL, worker 0 first."""
    log = tmp_path_factory.mktemp("workers") / "gateway.log"
    gateway = stack.start_gateway(triton.ports["grpc"], log, env={"RERANKER_WORKERS": "2"})
    found = re.search(r"2 gateway workers on \S+ \(internal ports \[(\d+), (\d+)\]\)", log.read_text())
    assert found, log.read_text()[-3000:]
    yield gateway.url(), [f"http://127.0.0.1:{port}" for port in found.groups()], log
    stack.stop(gateway.process)


@pytest.fixture(scope="module")
def reference(repository, models_dir):
    def scores(model: str, pairs: list[Pair]) -> list[float]:
        return [float(s) for s in stack.engine_scorer(repository, models_dir, model).score(pairs).score]
    return scores


async def test_a_mixed_stream_scores_like_the_engine(workers, reference):
    url, _, _ = workers
    singles = [(QUERY, DOCUMENTS[i % len(DOCUMENTS)]) for i in range(30)]
    lists = [(f"{QUERY} {i}", DOCUMENTS[: 1 + i % len(DOCUMENTS)]) for i in range(12)]
    capped = [(QUERY, DOCUMENTS) for _ in range(6)]  # other options: never merged with the plain ones
    large = (QUERY, DOCUMENTS * 10)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        answers = await asyncio.gather(
            *(client.post("/rerank", json={"query": q, "document": d}) for q, d in singles),
            *(client.post("/v1/rerank", json={"query": q, "documents": docs}) for q, docs in lists),
            *(client.post("/v1/rerank", json={"query": q, "documents": docs, "max_tokens_per_doc": 3})
              for q, docs in capped),
            client.post("/v1/rerank", json={"query": large[0], "documents": large[1]}),
        )
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    model = answers[len(singles)].json()["model"]
    single_ref = reference(model, [Pair(q, d) for q, d in singles])
    assert [a.json()["score"] for a in answers[: len(singles)]] == pytest.approx(single_ref, abs=1e-5)
    caps = [None] * len(lists) + [3] * len(capped) + [None]
    for (query, documents), cap, answer in zip(lists + capped + [large], caps, answers[len(singles):]):
        expected = reference(model, [Pair(query, d, max_document_tokens=cap) for d in documents])
        got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
        assert [got[i] for i in range(len(documents))] == pytest.approx(expected, abs=1e-5)


async def test_a_switch_through_one_worker_is_seen_by_the_other_before_it_answers_again(workers):
    _, (coordinator, follower), _ = workers
    body = {"query": QUERY, "documents": DOCUMENTS[:2]}
    async with httpx.AsyncClient(timeout=600) as client:
        for through, then, model in ((follower, coordinator, "bge"), (coordinator, follower, "minilm")):
            switched = await client.post(f"{through}/switch_model", json={"model_name": model})
            assert switched.status_code == 200, switched.text
            answer = await client.post(f"{then}/v1/rerank", json=body)
            assert answer.status_code == 200 and answer.json()["model"] == switched.json()["model"]
            for worker in (coordinator, follower):
                assert (await client.get(f"{worker}/models")).json()["active"] == switched.json()["model"]


async def test_a_client_that_disconnects_costs_no_other_request_its_answer(workers, reference):
    url, _, _ = workers
    host, port = url.removeprefix("http://").split(":")
    expected = reference("minilm-l6", [Pair(QUERY, d) for d in DOCUMENTS])

    async def post(index: int, leave: bool):
        body = json.dumps({"query": QUERY, "document": DOCUMENTS[index % len(DOCUMENTS)]}).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        await writer.drain()
        if leave:  # gone before the answer: its request is in flight, maybe in a merged Triton request
            writer.close()
            return None
        answer = await reader.read()
        writer.close()
        return answer

    answers = await asyncio.gather(*(post(i, leave=i % 3 == 0) for i in range(36)))
    for index, answer in enumerate(answers):
        if index % 3 == 0:
            continue
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:300]
        assert json.loads(body)["score"] == pytest.approx(expected[index % len(DOCUMENTS)], abs=1e-5)


async def test_a_bad_request_next_to_good_ones_fails_alone(workers, reference):
    url, _, _ = workers
    expected = reference("minilm-l6", [Pair(QUERY, d) for d in DOCUMENTS])
    bad = [  # refused by the gateway, by Triton (a limit no sequence can meet), by the gateway again
        ("/rerank", {"query": QUERY}, 422, "document"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "truncate_prompt_tokens": 1}, 422,
         "truncate_prompt_tokens"),
        ("/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "top_n": -1}, 422, "top_n"),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        answers = await asyncio.gather(
            *(client.post("/rerank", json={"query": QUERY, "document": DOCUMENTS[i % 5]}) for i in range(20)),
            *(client.post(path, json=body) for path, body, _, _ in bad),
        )
    for i, answer in enumerate(answers[:20]):
        assert answer.status_code == 200 and answer.json()["score"] == pytest.approx(expected[i % 5], abs=1e-5)
    for answer, (_, _, status, field) in zip(answers[20:], bad):
        assert answer.status_code == status and field in answer.text, answer.text


async def test_the_metrics_add_up_across_workers(workers):
    url, _, log = workers

    def served(text: str) -> int:
        return sum(int(float(v)) for v in re.findall(
            r'^reranker_request_duration_seconds_count\{model="minilm-l6",route="/rerank",status="200"\} (\S+)$',
            text, re.M))

    before = served(httpx.get(f"{url}/metrics").text)
    lines_before = len(re.findall(r"worker (\d) gateway\.access: .* POST /rerank 200", log.read_text()))
    for i in range(40):  # a new connection each: the kernel spreads them over both workers' sockets
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.post("/rerank", json={"query": QUERY, "document": DOCUMENTS[i % 5]}).status_code == 200
    deadline = time.monotonic() + 10
    while served(httpx.get(f"{url}/metrics").text) - before < 40 and time.monotonic() < deadline:
        time.sleep(0.1)  # the last answer is counted just after it is sent
    assert served(httpx.get(f"{url}/metrics").text) - before == 40
    answered_by = re.findall(r"worker (\d) gateway\.access: .* POST /rerank 200", log.read_text())[lines_before:]
    assert len(answered_by) == 40 and set(answered_by) == {"0", "1"}


async def test_switches_under_load_through_both_workers_fail_nothing(workers, reference):
    url, internal, _ = workers
    expected = {model: reference(model, [Pair(QUERY, d) for d in DOCUMENTS]) for model in ("minilm-l6",
                                                                                         "bge-reranker-base")}
    failures: list[str] = []
    served = {"minilm-l6": 0, "bge-reranker-base": 0}
    stop = asyncio.Event()

    async def client(index: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while not stop.is_set():
                document = index % len(DOCUMENTS)
                answer = await http.post("/v1/rerank", json={"query": QUERY, "documents": [DOCUMENTS[document]]})
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code}: {answer.text[:200]}")
                    continue
                body = answer.json()
                served[body["model"]] += 1
                if abs(body["results"][0]["relevance_score"] - expected[body["model"]][document]) > 1e-5:
                    failures.append(f"{body['model']} scored document {document} unlike the engine")

    clients = [asyncio.create_task(client(i)) for i in range(12)]
    try:
        async with httpx.AsyncClient(timeout=600) as admin:
            # Through the follower, then the coordinator, then the public port: every way a switch can come in.
            for through, model in ((internal[1], "bge"), (internal[0], "minilm"), (url, "bge"), (url, "minilm")):
                await asyncio.sleep(1.0)
                switched = await admin.post(f"{through}/switch_model", json={"model_name": model})
                assert switched.status_code == 200, switched.text
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*clients)
    assert failures == [], failures[:5]
    assert served["minilm-l6"] > 0 and served["bge-reranker-base"] > 0, served
