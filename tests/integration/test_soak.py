"""A bounded soak of `reranker serve` (supervised Triton plus the gateway),
with everything at once:

- valid traffic on every scoring route, some of it naming its model, every
  200 checked against the engine's own scores for that model;
- model switches back and forth (minilm-l6 <-> bge-reranker-base), some
  keeping the previous model loaded;
- a rotating set of malformed requests, each with its expected 4xx;
- bursts well past a low in-flight bound, so 429s really happen;
- Triton SIGKILLed mid-load (twice by default), restarted by the supervisor.

Every answer must be a correct 200 or a deliberate refusal in the JSON error
shape: 4xx as expected, 429 with Retry-After, 503 only while Triton is down or
recovering. No other 5xx, and no request may outlive its client timeout. The
stack is ready and scoring correctly at the end.

RERANKER_SOAK_SECONDS sets the traffic time (default 100); the counts are
printed on one line starting `SOAK:` (pytest -s shows it).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from rerank_engine.scoring import Pair
from tests import stack

SOAK_SECONDS = float(os.environ.get("RERANKER_SOAK_SECONDS", "100"))
KILLS = max(1, min(int(SOAK_SECONDS // 45), 6))
"""Triton kills, spread over the soak: 2 in the default 100 s, up to 6 in long soaks."""
MAX_IN_FLIGHT = 6
MAX_DOCUMENTS = 32
MAX_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 30
"""The gateway's Triton deadline: past it the gateway answers 504, which fails the soak."""
CLIENT_TIMEOUT_S = 45.0
"""Past the gateway's deadline: a scoring request still unanswered here has hung in the gateway."""
SWITCH_TIMEOUT_S = 120.0
"""A switch waits for model loads, queued behind the reloads after a kill; on 2 busy cores each takes 5-15 s."""
STEADY_CLIENTS = 3
BURST = 4 * MAX_IN_FLIGHT
TOLERANCE = 1e-5
MODELS = ("minilm-l6", "bge-reranker-base")
OUTAGE_ERRORS = {"backend_unavailable", "model_not_ready", "no_active_model", "model_load_failed"}
ERROR_KEYS = {"error", "error_type", "field", "detail"}  # detail: the message again, for FastAPI and Jina clients

QUERIES = ["what do giant pandas eat?", "今天天气如何？", "capital of France 🇫🇷"]
DOCUMENTS = [
    "Giant pandas eat bamboo, almost nothing else.",
    "The stock market closed higher on Friday.",
    "今天晴天适合外出游玩",
    "Paris is the capital and most populous city of France. " * 20,
    "Pandas are bears native to the mountains of central China.",
    "emoji 🐼🎋 and العربية, हिन्दी, ไทย",
    "Lyon",
    "Berlin is the capital of Germany.",
]

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(SOAK_SECONDS + 420)]

JSON = {"content-type": "application/json"}


async def _streamed(size: int):
    """A JSON body of about `size` bytes, sent in chunks without a declared length."""
    yield b'{"query": "q", "document": "'
    for _ in range(size // 8192):
        yield b"x" * 8192
    yield b'"}'


@dataclass(frozen=True)
class BadInput:
    name: str
    path: str
    status: int
    error_type: str
    field: str | None
    json: object = None
    content: bytes | None = None
    headers: dict | None = None
    chunked: int = 0  # a streamed body of about this many bytes, without a declared length

    def request(self) -> dict:
        if self.chunked:
            return {"content": _streamed(self.chunked), "headers": JSON}
        if self.content is not None:
            return {"content": self.content, "headers": self.headers or JSON}
        return {"json": self.json}


BAD_INPUTS = [
    BadInput("empty query", "/v1/rerank", 422, "invalid_request", "query", {"query": "", "documents": ["a"]}),
    BadInput("whitespace query", "/rerank", 422, "invalid_request", "query", {"query": " \t\n", "document": "a"}),
    BadInput("empty documents", "/v1/rerank", 422, "invalid_request", "documents", {"query": "q", "documents": []}),
    BadInput("non-string documents", "/v1/rerank", 422, "invalid_request", "documents",
             {"query": "q", "documents": [1, None]}),
    BadInput("too many documents", "/v1/rerank", 422, "invalid_request", "documents",
             {"query": "q", "documents": ["d"] * (MAX_DOCUMENTS + 1)}),
    BadInput("too many pairs", "/v1/score", 422, "invalid_request", "documents",
             {"text_1": "q", "text_2": ["d"] * (MAX_DOCUMENTS + 1)}),
    BadInput("invalid JSON", "/v1/rerank", 422, "invalid_request", "body", content=b'{"query": "q", "documents": ['),
    BadInput("invalid UTF-8", "/rerank", 400, "invalid_request", "body",
             content=b'{"query": "q\xff", "document": "d"}'),
    BadInput("wrong content type", "/v1/rerank", 415, "invalid_request", "body",
             content=b'{"query": "q", "documents": ["d"]}', headers={"content-type": "text/plain"}),
    BadInput("over-size body", "/rerank", 413, "invalid_request", "body",
             content=b'{"query": "q", "document": "' + b"x" * MAX_BYTES + b'"}'),
    BadInput("over-size chunked body", "/rerank", 413, "invalid_request", "body", chunked=MAX_BYTES + 16384),
    BadInput("unknown model", "/v1/rerank", 400, "unknown_model", "model",
             {"query": "q", "documents": ["d"], "model": "no-such-model"}),
    BadInput("unknown switch target", "/switch_model", 400, "unknown_model", "model_name",
             {"model_name": "no-such-model"}),
    BadInput("top_n 0", "/v1/rerank", 422, "invalid_request", "top_n", {"query": "q", "documents": ["d"], "top_n": 0}),
    BadInput("top_n negative", "/v2/rerank", 422, "invalid_request", "top_n",
             {"query": "q", "documents": ["d"], "top_n": -3}),
    BadInput("top_n of the wrong type", "/v1/rerank", 422, "invalid_request", "top_n",
             {"query": "q", "documents": ["d"], "top_n": "2"}),
    BadInput("unequal pairs", "/v1/score", 422, "invalid_request", None,
             {"queries": ["a", "b"], "documents": ["x", "y", "z"]}),
]


@dataclass
class Soak:
    client: httpx.AsyncClient
    reference: dict[str, dict[tuple[str, str], float]]
    started: float = field(default_factory=time.monotonic)
    statuses: Counter = field(default_factory=Counter)
    verified: int = 0
    latencies: list[float] = field(default_factory=list)  # of the 200s
    switches: int = 0
    switch_calls: int = 0
    bad_inputs: int = 0
    bursts: int = 0
    recoveries: list[float] = field(default_factory=list)
    outages: list[list[float]] = field(default_factory=list)  # [killed at, recovered at (+ grace)]
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures.append(f"{time.monotonic() - self.started:7.2f}s {message}")

    def in_outage(self, sent: float, answered: float) -> bool:
        return any(sent <= end and answered >= start for start, end in self.outages)

    async def send(self, path: str, timeout: float = CLIENT_TIMEOUT_S,
                   **kwargs) -> tuple[httpx.Response | None, float, float]:
        """POST and count the answer; a request still unanswered at the client timeout is a failure."""
        sent = time.monotonic()
        try:
            response = await self.client.post(path, timeout=timeout, **kwargs)
        except httpx.TimeoutException:
            self.statuses["timeout"] += 1
            self.fail(f"{path}: no answer in {timeout:.0f} s")
            return None, sent, time.monotonic()
        except httpx.TransportError as exc:
            self.statuses["transport error"] += 1
            self.fail(f"{path}: {exc!r}")
            return None, sent, time.monotonic()
        self.statuses[response.status_code] += 1
        return response, sent, time.monotonic()

    def refusal(self, what: str, response: httpx.Response, sent: float, answered: float) -> dict | None:
        """Check a non-200 answer is deliberate: the error shape, 429 with Retry-After, 503 only in an outage."""
        try:
            body = response.json()
        except ValueError:
            self.fail(f"{what}: {response.status_code} without a JSON body: {response.text[:200]!r}")
            return None
        if not (isinstance(body, dict) and {"error", "error_type"} <= body.keys() <= ERROR_KEYS):
            self.fail(f"{what}: {response.status_code} not in the error shape: {body}")
            return None
        status, problem = response.status_code, None
        if status == 429 and (body["error_type"] != "overloaded" or "retry-after" not in response.headers):
            problem = "429 without Retry-After, or not as overloaded"
        elif status == 503 and not (body["error_type"] in OUTAGE_ERRORS and self.in_outage(sent, answered)):
            problem = "503 outside a Triton outage"
        elif status >= 500 and status != 503:
            problem = f"{status}"
        if problem:
            self.fail(f"{what}: {problem}: {body}")
            return None
        return body

    def check_scores(self, what: str, model: str, query: str, documents: list[str], scores: dict[int, float]) -> bool:
        table = self.reference.get(model)
        if table is None:
            self.fail(f"{what}: scored by unexpected model {model!r}")
            return False
        for index, score in scores.items():
            expected = table[(query, documents[index])]
            if not math.isclose(score, expected, abs_tol=TOLERANCE):
                self.fail(f"{what}: {model} gave {score} for document {index}, the engine {expected}")
                return False
        return True

    async def valid_request(self, rng: random.Random, what: str = "valid") -> int | None:
        """Send one valid request of a random form and check the answer; returns its status."""
        query = rng.choice(QUERIES)
        documents = [rng.choice(DOCUMENTS) for _ in range(rng.randint(1, 6))]
        form = rng.choice(("v1", "v1", "v2", "rerank-list", "pair", "score"))
        named = rng.choice(MODELS) if form != "pair" and rng.random() < 0.3 else None
        if form == "pair":
            path, body = "/rerank", {"query": query, "document": documents[0]}
        elif form == "score":
            path, body = "/v1/score", {"text_1": query, "text_2": documents}
        else:
            path = {"v1": "/v1/rerank", "v2": "/v2/rerank", "rerank-list": "/rerank"}[form]
            body = {"query": query, "documents": [d if rng.random() < 0.7 else {"text": d} for d in documents],
                    "return_documents": rng.random() < 0.5}
            if rng.random() < 0.5:
                body["top_n"] = rng.randint(1, len(documents) + 1)
        if named:
            body["model"] = named
        what = f"{what} {path} ({form}{', model ' + named if named else ''})"
        response, sent, answered = await self.send(path, json=body)
        if response is None:
            return None
        if response.status_code != 200:
            error = self.refusal(what, response, sent, answered)
            # A named model the switcher has just unloaded is the caller's mistake: 400, model_not_loaded.
            deliberate = response.status_code in (429, 503) or (
                named and response.status_code == 400 and error and error["error_type"] == "model_not_loaded")
            if error is not None and not deliberate:
                self.fail(f"{what}: {response.status_code} {error}")
            return response.status_code
        self.latencies.append(answered - sent)
        if self.check_answer(what, form, response.json(), query, documents, body, named):
            self.verified += 1
        return 200

    def check_answer(self, what: str, form: str, answer: dict, query: str, documents: list[str], body: dict,
                     named: str | None) -> bool:
        if form == "pair":
            # The seed's answer does not say which model scored it: it must be one of the two, exactly.
            score = answer["score"]
            if not any(math.isclose(score, self.reference[m][(query, documents[0])], abs_tol=TOLERANCE)
                       for m in MODELS):
                self.fail(f"{what}: {score} is neither model's score")
                return False
            return True
        if form == "score":
            scores = {d["index"]: d["score"] for d in answer["data"]}
            if not (self.check_model(what, answer["model"], named)
                    and self.check_scores(what, answer["model"], query, documents, scores)):
                return False
            if [d["index"] for d in answer["data"]] != list(range(len(documents))):
                self.fail(f"{what}: data out of order: {answer['data']}")
                return False
            return True
        return self.check_ranking(what, answer, query, documents, body, named)

    def check_model(self, what: str, model: str, named: str | None) -> bool:
        if named and model != named:
            self.fail(f"{what}: asked for {named}, scored by {model}")
            return False
        return True

    def check_ranking(self, what: str, answer: dict, query: str, documents: list[str], body: dict,
                      named: str | None) -> bool:
        model, results = answer["model"], answer["results"]
        if not self.check_model(what, model, named):
            return False
        scores = {r["index"]: r["relevance_score"] for r in results}
        if not self.check_scores(what, model, query, documents, scores):
            return False
        expected_count = min(body.get("top_n") or len(documents), len(documents))
        order = [(-r["relevance_score"], r["index"]) for r in results]
        if len(results) != expected_count or len(scores) != expected_count or order != sorted(order):
            self.fail(f"{what}: results not ranked by score (or not top_n={body.get('top_n')}): {results}")
            return False
        left_out = set(range(len(documents))) - set(scores)
        table = self.reference[model]
        best_left_out = max((table[(query, documents[i])] for i in left_out), default=-math.inf)
        if best_left_out > results[-1]["relevance_score"] + TOLERANCE:
            self.fail(f"{what}: top_n left out a better document: {results}")
            return False
        if body["return_documents"] and any(r["document"]["text"] != documents[r["index"]] for r in results):
            self.fail(f"{what}: echoed documents differ: {results}")
            return False
        return True

    async def bad_request(self, bad: BadInput) -> None:
        self.bad_inputs += 1
        what = f"bad input ({bad.name})"
        response, sent, answered = await self.send(bad.path, **bad.request())
        if response is None:
            return
        error = self.refusal(what, response, sent, answered)
        if error is None or response.status_code in (429, 503):
            return  # counted and checked in refusal()
        if response.status_code != bad.status or error["error_type"] != bad.error_type or (
                bad.field and not str(error.get("field", "")).startswith(bad.field)):
            self.fail(f"{what}: expected {bad.status} {bad.error_type} on {bad.field}, got "
                      f"{response.status_code} {error}")

    async def switch(self, target: str, keep_loaded: bool) -> None:
        self.switch_calls += 1
        what = f"switch to {target} (keep_loaded {keep_loaded})"
        response, sent, answered = await self.send(
            "/switch_model", SWITCH_TIMEOUT_S, json={"model_name": target, "keep_loaded": keep_loaded})
        if response is None:
            return
        if response.status_code != 200:
            error = self.refusal(what, response, sent, answered)
            if error is not None and response.status_code != 503:
                self.fail(f"{what}: {response.status_code} {error}")
            return
        answer = response.json()
        if answer["model"] != target:
            self.fail(f"{what}: answered {answer}")
        self.switches += answer["previous"] != answer["model"]


async def steady_client(soak: Soak, seed: int, stop: asyncio.Event) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        if await soak.valid_request(rng) in (429, 503):
            await pause(stop, 0.2)  # as a client honouring Retry-After would, instead of spinning


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return early (True) when the soak stops."""
    try:
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))
    except asyncio.TimeoutError:
        return False
    return True


async def switcher(soak: Soak, stop: asyncio.Event) -> None:
    rng = random.Random(100)
    active = MODELS[0]
    while not await pause(stop, rng.uniform(0.2, 1.0)):
        active = MODELS[1] if active == MODELS[0] else MODELS[0]
        # Mostly keeping the previous model: switching back to it is then instant, so more switches fit in
        # the soak than model loads would allow; the others unload (after the drain) and force a load later.
        await soak.switch(active, keep_loaded=rng.random() < 0.75)


async def bad_client(soak: Soak, stop: asyncio.Event) -> None:
    index = 0
    while not stop.is_set():
        await soak.bad_request(BAD_INPUTS[index % len(BAD_INPUTS)])
        index += 1
        await pause(stop, 0.1)


async def burster(soak: Soak, stop: asyncio.Event) -> None:
    rng = random.Random(200)
    while not await pause(stop, rng.uniform(3, 6)):
        soak.bursts += 1
        await asyncio.gather(*(soak.valid_request(random.Random(rng.random()), "burst") for _ in range(BURST)))


async def killer(soak: Soak, serve: stack.Process, stop: asyncio.Event) -> None:
    for kill in range(KILLS):
        at = soak.started + SOAK_SECONDS * (kill + 1) / (KILLS + 1)
        if await pause(stop, at - time.monotonic()):
            return
        (server,) = [p for p in psutil.Process(serve.process.pid).children() if p.name() == "tritonserver"]
        outage = [time.monotonic(), math.inf]
        soak.outages.append(outage)
        os.killpg(server.pid, signal.SIGKILL)  # the server and its model stubs, as an OOM kill would
        deadline = outage[0] + 180
        while not await recovered(soak):
            if time.monotonic() > deadline:
                soak.fail(f"no recovery within 180 s of kill {kill + 1}")
                stop.set()
                return
            await asyncio.sleep(0.5)
        outage[1] = time.monotonic()
        soak.recoveries.append(outage[1] - outage[0])


async def recovered(soak: Soak) -> bool:
    """Serving again as before the kill: /health/ready is 200, the active model scores a pair exactly as
    the engine does, and so does each model by name, unless the gateway says it is not loaded (400).

    Readiness alone is not enough: it covers the active model, and the gateway reloads the models it
    kept loaded besides it afterwards, answering 503 for them meanwhile.
    """
    query, document = QUERIES[0], DOCUMENTS[0]
    try:
        if (await soak.client.get("/health/ready")).status_code != 200:
            return False
        for model in (None, *MODELS):
            body = {"query": query, "documents": [document], **({"model": model} if model else {})}
            response = await soak.client.post("/v1/rerank", json=body)
            if response.status_code == 400 and model and response.json()["error_type"] == "model_not_loaded":
                continue
            if response.status_code != 200:
                return False
            answer = response.json()
            expected = soak.reference[answer["model"]][(query, document)]
            if not math.isclose(answer["results"][0]["relevance_score"], expected, abs_tol=TOLERANCE):
                return False
    except httpx.TransportError:
        return False
    return True


def reference_scores(repository, models_dir) -> dict[str, dict[tuple[str, str], float]]:
    """Every (query, document) pair the soak sends, scored once by each model's engine in this process."""
    pairs = [Pair(q, d) for q in QUERIES for d in dict.fromkeys(DOCUMENTS)]
    reference = {}
    for model in MODELS:
        scores = stack.engine_scorer(repository, models_dir, model).score(pairs).score
        reference[model] = {(p.query, p.document): float(s) for p, s in zip(pairs, scores)}
    return reference


async def test_soak_mixed_traffic_switches_bad_input_bursts_and_triton_kills(repository, models_dir, tmp_path):
    reference = reference_scores(repository, models_dir)
    env = {
        "RERANKER_MAX_CONCURRENT_REQUESTS": str(MAX_IN_FLIGHT),
        "RERANKER_MAX_DOCUMENTS_PER_REQUEST": str(MAX_DOCUMENTS),
        "RERANKER_MAX_REQUEST_BYTES": str(MAX_BYTES),
        "RERANKER_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
    }
    log = tmp_path / "serve.log"
    serve = stack.start_serve(repository, models_dir, log, env=env)
    try:
        limits = httpx.Limits(max_connections=BURST + 16, max_keepalive_connections=BURST + 16)
        async with httpx.AsyncClient(base_url=serve.url(), timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
            soak = Soak(client, reference)
            stop = asyncio.Event()
            workers = [asyncio.create_task(steady_client(soak, seed, stop)) for seed in range(STEADY_CLIENTS)]
            workers += [asyncio.create_task(w(soak, stop)) for w in (switcher, bad_client, burster)]
            faults = asyncio.create_task(killer(soak, serve, stop))
            await pause(stop, SOAK_SECONDS)
            stop.set()
            await asyncio.gather(*workers)
            await faults
            elapsed = time.monotonic() - soak.started

            deadline = time.monotonic() + 60
            while not await recovered(soak):
                if time.monotonic() > deadline:
                    soak.fail("not ready, or not scoring correctly, at the end")
                    break
                await asyncio.sleep(0.5)
            final = await client.get("/health/ready")
    finally:
        assert stack.stop(serve.process, signal.SIGINT) == 0

    sent = sum(soak.statuses.values())
    by_status = ", ".join(f"{code}: {n}" for code, n in sorted(soak.statuses.items(), key=lambda kv: str(kv[0])))
    median, p95 = statistics.quantiles(soak.latencies, n=20)[9::9] if len(soak.latencies) > 1 else (math.nan,) * 2
    slowest = max(soak.latencies, default=math.nan)
    recoveries = ", ".join(f"{s:.1f}" for s in soak.recoveries)
    print(f"\nSOAK: {elapsed:.0f} s of traffic; requests sent {sent} ({by_status}); "
          f"200s verified correct {soak.verified} (latency median {median:.2f} s, p95 {p95:.2f} s, "
          f"max {slowest:.2f} s); switches made {soak.switches} in {soak.switch_calls} calls; faults injected: "
          f"bad inputs {soak.bad_inputs}, bursts {soak.bursts} of {BURST} (in-flight bound {MAX_IN_FLIGHT}), "
          f"Triton kills {len(soak.recoveries)}/{KILLS} (recovered in {recoveries} s); "
          f"failures {len(soak.failures)}; final /health/ready {final.status_code}")
    assert soak.failures == [], "\n".join(soak.failures[:20]) + f"\n--- {log} ---\n" + log.read_text()[-3000:]
    assert final.status_code == 200
    assert len(soak.recoveries) == KILLS
    assert soak.statuses[429] > 0, "the bursts never went past the in-flight bound"
    assert soak.switches > 0 and soak.verified > 0
