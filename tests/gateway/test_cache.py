"""The score cache's logic (gateway/serving/cache.py) against the in-memory Triton
(tests/gateway/fake_backend.py), whose scores depend on every input: which key
changes with what, that only misses reach the model, that a cached answer is
the uncached one, that no hit survives a change of fingerprint, and the byte
bound. The Redis tier runs against a real redis-server (tests/stack.py);
tests/app and tests/integration run the cache against a real Triton."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import tracemalloc

import pytest

from gateway.api.protocol import RerankRequest, ScoreRequest
from gateway.fleet import discovery
from gateway.fleet.pool import TritonPool
from gateway.metrics import GatewayMetrics, RequestRecord
from gateway.serving.cache import ENTRY_BYTES, CacheKeys, CachePolicy, MemoryStore, RedisStore, ScoreCache
from gateway.serving.service import RerankService
from gateway.serving.triton import PairOptions
from gateway.settings import GatewaySettings
from tests import stack
from tests.gateway.fake_backend import FakeTriton
from tests.gateway.test_model_manager import started

pytestmark = pytest.mark.anyio

QUERY = "what do giant pandas eat?"
DOCUMENTS = [f"document {i} about bamboo, bears and {'x' * (i % 7)}" for i in range(100)]


async def services(**settings) -> tuple[FakeTriton, RerankService, RerankService]:
    """A fake Triton with models a and b, and two services over it: one with the cache, one without."""
    triton = FakeTriton("a", "b")
    triton.by_pair = True
    for name in triton.configs:  # Qwen3-like: instructions reach the model, and so the key
        triton.configs[name] = dataclasses.replace(triton.configs[name], parameters={
            "scorer": "qwen3_reranker", "max_length": "512"})
    triton.fingerprints = {"a": "fp-a1", "b": "fp-b1"}
    models = await started(triton, cache=True, **settings)
    cache = ScoreCache(models.settings, models.metrics)
    models.on_change = cache.fingerprints.forget
    await cache.start()
    return triton, RerankService(triton, models, models.settings, cache=cache), RerankService(
        triton, models, models.settings)


def record(api_key: str | None = None, header: str | None = None) -> RequestRecord:
    return RequestRecord(api_key=api_key, cache=CachePolicy.from_header(header))


def answer(response) -> tuple:
    """Everything of a rerank answer a cache could get wrong: ranking, scores, raw scores, chunks, usage."""
    usage = response.usage.model_dump(exclude={"cached_documents"})
    return [(r.index, r.relevance_score, r.raw_score, r.chunks) for r in response.results], usage


async def rerank(service: RerankService, documents: list[str], rec: RequestRecord | None = None, **body):
    rec = rec or record()
    response = await service.rerank(
        RerankRequest(query=body.pop("query", QUERY), documents=documents, return_raw_scores=True, **body), rec)
    return response, rec


# --- keys
def test_every_input_of_a_score_changes_the_key():
    keys = CacheKeys(b"secret")
    base = dict(scope="", model="a", fingerprint="fp", options=PairOptions(), instruction=None,
                queries=[QUERY], documents=["doc"])
    reference = keys.of(**base)[0]
    changes = {
        "scope": "tenant-1", "model": "b", "fingerprint": "fp2", "instruction": "", "queries": [QUERY + " "],
        "documents": ["doc."],
    }
    options = [PairOptions(max_document_tokens=10), PairOptions(max_tokens=64), PairOptions(max_chunks=2),
               PairOptions(keep_end=True)]
    variants = [{**base, name: value} for name, value in changes.items()] + [{**base, "options": o} for o in options]
    variants.append({**base, "instruction": "Given a query, retrieve relevant passages"})
    found = [keys.of(**variant)[0] for variant in variants]
    assert reference not in found and len(set(found)) == len(found)
    assert keys.of(**base)[0] == reference  # and nothing else does
    assert CacheKeys(b"another secret").of(**base)[0] != reference
    # No field can leak into its neighbour: ("ab", "c") and ("a", "bc") differ.
    assert keys.of(**{**base, "queries": ["ab"], "documents": ["c"]}) != keys.of(**{**base, "queries": ["a"],
                                                                                   "documents": ["bc"]})
    assert len(reference) == 16 and b"doc" not in reference


def test_every_pair_option_is_in_the_key():
    # A field added to PairOptions later must change the key without anyone remembering to add it.
    keys = CacheKeys(b"")
    default = keys.of("", "a", "fp", PairOptions(), None, ["q"], ["d"])
    for field in dataclasses.fields(PairOptions):
        changed = {"max_chunks": 3, "keep_end": True}.get(field.name, 7)
        assert keys.of("", "a", "fp", dataclasses.replace(PairOptions(), **{field.name: changed}), None,
                       ["q"], ["d"]) != default, field.name


def test_cache_control_directives():
    assert CachePolicy.from_header(None) == CachePolicy(True, True)
    assert CachePolicy.from_header("No-Cache") == CachePolicy(False, True)
    assert CachePolicy.from_header("max-age=0, no-store") == CachePolicy(True, False)


# --- only misses reach the model, and the answer is the uncached one
async def test_only_misses_are_sent_and_the_answer_equals_the_uncached_one():
    triton, cached, plain = await services()
    first, rec = await rerank(cached, DOCUMENTS[:60])
    assert rec.cached == 0 and sum(triton.rows) == 60  # the first answer confirms the fingerprint
    await rerank(cached, DOCUMENTS[:60])
    sent = sum(triton.rows)
    response, rec = await rerank(cached, DOCUMENTS)
    assert sum(triton.rows) - sent == 40 and rec.cached == 60 and response.usage.cached_documents == 60
    reference, _ = await rerank(plain, DOCUMENTS)
    assert answer(response) == answer(reference)
    again, rec = await rerank(cached, list(reversed(DOCUMENTS)))
    assert rec.cached == 100 and answer(again) == answer((await rerank(plain, list(reversed(DOCUMENTS))))[0])


async def test_chunked_truncated_and_raw_outputs_come_back_from_the_cache_as_scored():
    triton, cached, plain = await services()
    for _ in range(2):
        response, rec = await rerank(cached, DOCUMENTS[:30], max_chunks_per_doc=3)
    assert rec.cached == 30
    reference, _ = await rerank(plain, DOCUMENTS[:30], max_chunks_per_doc=3)
    assert answer(response) == answer(reference)
    assert reference.usage.truncated_documents > 0 and len({r.chunks for r in reference.results}) > 1


async def test_the_score_route_uses_the_cache_per_pair():
    triton, cached, plain = await services()
    body = dict(queries=["q1", "q2", "q1"], documents=["d1", "d2", "d3"])
    await cached.score(ScoreRequest(**body), record())
    await cached.score(ScoreRequest(**body), record())
    rec = record()
    response = await cached.score(ScoreRequest(queries=["q2", "q1", "q9"], documents=["d2", "d3", "d1"]), rec)
    reference = await plain.score(ScoreRequest(queries=["q2", "q1", "q9"], documents=["d2", "d3", "d1"]), record())
    assert rec.cached == 2 and response.usage.cached_documents == 2
    assert [d.score for d in response.data] == [d.score for d in reference.data]


# --- what changes the key, end to end
@pytest.mark.parametrize(("first", "second"), [
    ({}, {"max_tokens_per_doc": 8}),
    ({}, {"truncate_prompt_tokens": 20}),
    ({}, {"max_chunks_per_doc": 2}),
    ({}, {"truncation_side": "left"}),
    ({"instruction": "find answers"}, {"instruction": "find questions"}),
    ({}, {"model": "b"}),
])
async def test_a_request_that_differs_in_what_changes_a_score_gets_no_hit(first, second):
    triton, cached, _ = await services()
    if second.get("model") == "b":
        await cached.switch_model("b", keep_loaded=True)
        await cached.switch_model("a", keep_loaded=True)
    for _ in range(2):
        _, rec = await rerank(cached, DOCUMENTS[:10], **first)
    assert rec.cached == 10
    _, rec = await rerank(cached, DOCUMENTS[:10], **second)
    assert rec.cached == 0
    _, rec = await rerank(cached, DOCUMENTS[:10], **second)
    assert rec.cached == 10


async def test_entries_are_scoped_per_api_key_name_unless_shared():
    triton, cached, _ = await services()
    for _ in range(2):
        await rerank(cached, DOCUMENTS[:10], record("tenant-a"))
    _, rec = await rerank(cached, DOCUMENTS[:10], record("tenant-b"))
    assert rec.cached == 0
    _, rec = await rerank(cached, DOCUMENTS[:10], record("tenant-a"))
    assert rec.cached == 10

    triton, shared, _ = await services(cache_scope="shared")
    for _ in range(2):
        await rerank(shared, DOCUMENTS[:10], record("tenant-a"))
    _, rec = await rerank(shared, DOCUMENTS[:10], record("tenant-b"))
    assert rec.cached == 10


# --- fingerprints: no hit under what the model no longer serves
async def test_a_reload_under_the_same_name_is_never_answered_from_before_it():
    triton, cached, plain = await services()
    for _ in range(2):
        _, rec = await rerank(cached, DOCUMENTS[:20])
    assert rec.cached == 20
    # Switch away and back, with new weights meanwhile: the reload forgets the fingerprint.
    await cached.switch_model("b")
    triton.fingerprints["a"] = "fp-a2"
    await cached.switch_model("a")
    sent = sum(triton.rows)
    response, rec = await rerank(cached, DOCUMENTS[:20])
    assert rec.cached == 0 and sum(triton.rows) - sent == 20
    assert answer(response) == answer((await rerank(plain, DOCUMENTS[:20]))[0])
    _, rec = await rerank(cached, DOCUMENTS[:20])
    assert rec.cached == 20  # confirmed again: the new weights' own entries


async def test_a_switch_to_another_model_and_back_with_the_same_weights_hits_again():
    triton, cached, plain = await services()
    for _ in range(2):
        await rerank(cached, DOCUMENTS[:20])
    await cached.switch_model("b")
    response, rec = await rerank(cached, DOCUMENTS[:20])
    assert rec.cached == 0 and response.model == "b"
    await cached.switch_model("a")
    await rerank(cached, DOCUMENTS[:1])  # the first answer after the load confirms the fingerprint
    response, rec = await rerank(cached, DOCUMENTS[:20])
    assert rec.cached == 20 and answer(response) == answer((await rerank(plain, DOCUMENTS[:20]))[0])


async def test_hits_read_under_a_fingerprint_the_model_no_longer_reports_are_scored_again():
    # Weights changed under the gateway without a load it saw (another actor reloaded the model):
    # the first response carrying the new fingerprint sends the request's hits to the model too.
    triton, cached, plain = await services()
    for _ in range(2):
        await rerank(cached, DOCUMENTS[:50])
    triton.fingerprints["a"] = "fp-a2"
    sent = sum(triton.rows)
    response, rec = await rerank(cached, DOCUMENTS[:60])  # 50 hits under fp-a1 and 10 misses
    assert rec.cached == 0 and sum(triton.rows) - sent == 60
    assert answer(response) == answer((await rerank(plain, DOCUMENTS[:60]))[0])
    assert cached.cache.metrics.cache_skipped.labels("stale")._value.get() == 50


async def test_a_model_that_reports_no_fingerprint_is_never_cached():
    triton, cached, _ = await services()
    triton.fingerprints.pop("a")
    for _ in range(3):
        _, rec = await rerank(cached, DOCUMENTS[:10])
        assert rec.cached == 0
    assert cached.cache.memory.entries == 0


async def test_replicas_that_disagree_leave_the_fingerprint_unconfirmed():
    triton, cached, _ = await services()
    answers = iter(["fp-a1", "fp-a2"] * 10)
    real = triton.score

    async def mixed(model, queries, documents, *args, **kwargs):
        triton.fingerprints["a"] = next(answers)  # each chunk from another replica
        return await real(model, queries, documents, *args, **kwargs)

    triton.score = mixed
    for _ in range(3):
        _, rec = await rerank(cached, DOCUMENTS[:16])  # two chunks of 8 (max_batch_size)
        assert rec.cached == 0
    assert cached.cache.fingerprints.confirmed("a")[0] is None


async def test_a_replica_that_comes_or_goes_forgets_its_models_fingerprints():
    replica = FakeTriton("a")
    await replica.load("a")
    pool = TritonPool(discovery.parse_targets("r1:1"), lambda address: replica, 5.0)
    forgotten: list[str] = []
    pool.on_model_change = forgotten.append
    await pool.start()
    try:
        assert forgotten == ["a"]  # first seen READY
        await pool.check_all()
        assert forgotten == ["a"]  # nothing changed
        replica.crash()
        await pool.check_all()
        assert forgotten == ["a", "a"]
    finally:
        await pool.close()


# --- bypass
async def test_a_request_can_bypass_the_cache():
    triton, cached, _ = await services()
    for _ in range(2):
        await rerank(cached, DOCUMENTS[:10])
    sent = sum(triton.rows)
    _, rec = await rerank(cached, DOCUMENTS[:10], cache=False)
    assert rec.cached == 0 and sum(triton.rows) - sent == 10
    _, rec = await rerank(cached, DOCUMENTS[:10], record(header="no-cache"))
    assert rec.cached == 0
    # cache: false stores nothing; no-store reads but stores nothing; no-cache stores what it scored.
    _, rec = await rerank(cached, DOCUMENTS[10:20], cache=False)
    _, rec = await rerank(cached, DOCUMENTS[10:20], record(header="no-store"))
    assert rec.cached == 0
    _, rec = await rerank(cached, DOCUMENTS[10:20], record(header="no-cache"))
    _, rec = await rerank(cached, DOCUMENTS[10:20])
    assert rec.cached == 10


async def test_a_non_finite_score_is_an_error_and_never_stored():
    triton, cached, _ = await services()
    await rerank(cached, DOCUMENTS[:1])
    real = triton.score

    async def broken(model, queries, documents, *args, **kwargs):
        outputs = await real(model, queries, documents, *args, **kwargs)
        outputs.score[0] = float("nan")
        return outputs

    triton.score = broken
    with pytest.raises(Exception, match="non-finite"):
        await rerank(cached, ["poisoned"])
    triton.score = real
    _, rec = await rerank(cached, ["poisoned"])
    assert rec.cached == 0


# --- the in-process tier's bound
def test_the_memory_tier_stays_within_its_bytes_and_counts_evictions():
    store = MemoryStore(2**20)
    evicted = store.put_many([(i.to_bytes(16, "little"), b"v" * 17) for i in range(10_000)])
    assert store.entries == 2**20 // ENTRY_BYTES and store.bytes <= 2**20
    assert evicted == 10_000 - store.entries
    assert store.get_many([(0).to_bytes(16, "little"), (9_999).to_bytes(16, "little")]) == [None, b"v" * 17]


def test_the_byte_accounting_matches_what_python_allocates():
    store = MemoryStore(256 * 2**20)
    import os

    items = [(os.urandom(16), os.urandom(17)) for _ in range(100_000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store.put_many(items)
        del items  # the store's own references remain
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The items were allocated before tracing: what is traced is the containers' slots, so add the objects.
    used += 100_000 * (49 + 50)
    assert 0.7 < store.bytes / used < 1.4, (store.bytes, used)


# --- the Redis tier, against a real redis-server
@pytest.fixture
def redis_server(tmp_path):
    server = stack.start_redis(tmp_path)
    yield server
    stack.stop(server.process)


async def test_redis_stores_and_serves_entries_shared_by_two_caches(redis_server):
    settings = dict(cache_url=redis_server.url("redis"), cache_secret="shared-secret", cache_max_bytes=0)
    triton, first, _ = await services(**settings)
    await rerank(first, DOCUMENTS[:10])
    await rerank(first, DOCUMENTS[:10])  # confirmed, then stored in Redis
    await asyncio.sleep(0.2)  # writes go in the background
    other_triton, second, plain = await services(**settings)
    await rerank(second, DOCUMENTS[:1])  # confirms the same fingerprint
    response, rec = await rerank(second, DOCUMENTS[:10])
    assert rec.cached >= 9 and answer(response) == answer((await rerank(plain, DOCUMENTS[:10]))[0])
    assert second.cache.metrics.cache_hits.labels("redis")._value.get() >= 9
    await first.cache.close()
    await second.cache.close()


async def test_a_redis_outage_is_bypassed_within_the_timeout_logged_once_and_counted(redis_server, tmp_path,
                                                                                     caplog):
    settings = dict(cache_url=redis_server.url("redis"), cache_max_bytes=0, cache_redis_timeout_s=0.2,
                    cache_redis_retry_s=0.5)
    triton, cached, plain = await services(**settings)
    await rerank(cached, DOCUMENTS[:10])
    stack.stop(redis_server.process)
    caplog.set_level(logging.INFO, logger="gateway.serving.cache")
    loop = asyncio.get_running_loop()
    for _ in range(20):
        started = loop.time()
        response, rec = await rerank(cached, DOCUMENTS[:10])
        assert loop.time() - started < 0.2 + 0.3  # the timeout, and the fake model's own time
        assert rec.cached == 0 and answer(response) == answer((await rerank(plain, DOCUMENTS[:10]))[0])
        await asyncio.sleep(0.1)  # past retry_s now and then: the breaker tries again
    outages = [r for r in caplog.records if "goes on without it" in r.getMessage()]
    assert len(outages) == 1 and outages[0].levelno == logging.WARNING
    metrics = cached.cache.metrics
    assert metrics.cache_redis_errors.labels("get")._value.get() >= 2 and metrics.cache_redis_up._value.get() == 0
    # Back on the same port: the next probe finds it, one line says so, and entries flow again.
    restarted = stack.start_redis(tmp_path, port=redis_server.ports["redis"])
    try:
        await asyncio.sleep(0.6)
        for _ in range(3):
            _, rec = await rerank(cached, DOCUMENTS[:10])
            await asyncio.sleep(0.1)
        assert rec.cached == 10 and metrics.cache_redis_up._value.get() == 1
        assert len([r for r in caplog.records if "is back" in r.getMessage()]) == 1
    finally:
        await cached.cache.close()
        stack.stop(restarted.process)


async def test_a_redis_that_never_answers_costs_at_most_the_timeout(tmp_path):
    # A listening socket that accepts and never replies: Redis hung, or a black-holed network.
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        store = RedisStore(f"redis://127.0.0.1:{port}", 0.1, 30.0, 60, GatewayMetrics())
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await store.get_many([b"k" * 16]) is None
        assert loop.time() - started < 0.3
        started = loop.time()
        assert await store.get_many([b"k" * 16]) is None  # the breaker is open: not even tried
        assert loop.time() - started < 0.01
        await store.close()
    finally:
        listener.close()


def test_settings_name_what_is_wrong():
    with pytest.raises(ValueError, match="redis://"):
        GatewaySettings(cache_url="http://redis:6379")
    with pytest.raises(ValueError, match="at least 1 MiB"):
        GatewaySettings(cache_max_bytes=1000)
    assert GatewaySettings(cache_url="").cache_on is False
    assert GatewaySettings(cache_url="redis://r:6379/0").cache_on is True


async def test_redis_entries_expire_after_the_ttl(redis_server):
    store = RedisStore(redis_server.url("redis"), 1.0, 5.0, 1, GatewayMetrics())
    store.put_many([(b"k" * 16, b"v" * 17)])
    await asyncio.gather(*store._writes)
    assert await store.get_many([b"k" * 16]) == [b"v" * 17]
    await asyncio.sleep(2.1)  # Redis expires keys in whole seconds
    assert await store.get_many([b"k" * 16]) == [None]
    await store.close()
