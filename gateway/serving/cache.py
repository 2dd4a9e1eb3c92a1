"""The score cache: per (query, document) pair, content-addressed, in this
process (bounded in bytes) and optionally shared through Redis, so that a
pair scored once is not scored again by the model.

A key is a keyed BLAKE2b digest of everything that changes a score: the
API-key scope (RERANKER_CACHE_SCOPE), the model's Triton name, its
fingerprint (what the model instance reports with every response:
`rerank_engine.fingerprint`), the pair options (token limits, chunks, which
end is cut), the instruction, the query and the document. No text is kept:
keys are digests, values the six per-pair outputs in 17 bytes.

The fingerprint is never guessed. `FingerprintRegistry` holds, per model,
the last one a response carried; every (re)load, unload, replica that comes
or goes forgets it (the model manager and the replica pool say so), and until
a response confirms one again the model's pairs are scored, not looked up.
A response that carries another fingerprint than the one the hits were read
under sends the hits to the model too. Results are stored under the
fingerprint of the response that computed them, so an entry is right by
construction; what the registry guards is which entries are read.

The in-process tier belongs to one process (each gateway worker has its own,
and its own byte bound). The Redis tier is shared by every worker and gateway
using the same URL and secret; it is best effort: every call is bounded by
RERANKER_CACHE_REDIS_TIMEOUT_S, a failure opens a circuit breaker for
RERANKER_CACHE_REDIS_RETRY_S during which Redis is not tried, and the request
goes on as a miss. One warning is logged per outage, one line when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

import cachetools
import numpy as np

from gateway.metrics import GatewayMetrics
from gateway.serving.triton import PairOptions, ScoreOutputs
from gateway.settings import GatewaySettings
from rerank_engine import contract

log = logging.getLogger(__name__)

KEY_VERSION = b"1"
"""In every key: bumped when the key's fields or the entry layout change, so old entries are never misread."""

ENTRY = np.dtype([(contract.OUTPUT_SCORE, "<f4"), (contract.OUTPUT_RAW_SCORE, "<f4"),
                  (contract.OUTPUT_NUM_TOKENS, "<i4"), (contract.OUTPUT_INPUT_TOKENS, "<i4"),
                  (contract.OUTPUT_TRUNCATED, "?"), (contract.OUTPUT_CHUNKS, "<i4")])
"""One pair's outputs (contract.SCORE_OUTPUTS, in order), packed: 17 bytes."""

DTYPES = {name: ENTRY.fields[name][0] for name in contract.SCORE_OUTPUTS}

ENTRY_BYTES = 320
"""What one in-process entry costs: the 16-byte key and 17-byte value as Python bytes (49 + 50), and their
slots in cachetools' dicts and LRU order (measured with tracemalloc: about 310 bytes at 200,000 entries;
tests/gateway/test_cache.py checks the bound against tracemalloc)."""

REDIS_PREFIX = b"rr" + KEY_VERSION + b":"
STORE_SCRIPT = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ttl > 0 then redis.call('SET', key, ARGV[i + 1], 'EX', ttl) else redis.call('SET', key, ARGV[i + 1]) end
end
return #KEYS
"""
"""A request's entries in one command: redis-py took 7 ms to pipeline 100 SETs, this 1.1 ms (hiredis, 2 busy
cores). One command carries keys of any hash slot: a single Redis (or a primary), not Redis Cluster."""
MAX_PENDING_WRITES = 256
"""Redis writes in flight before new ones are dropped: a slow Redis must not pile up tasks."""

Send = Callable[[Sequence[str], Sequence[str]], Awaitable[list[ScoreOutputs]]]
"""Scores rows on the model: the chunks' outputs, in row order."""


@dataclass
class CachePolicy:
    """What one request lets the cache do: `Cache-Control: no-cache` (score afresh, store the result),
    `no-store` (do not store), or the body's `cache: false` (both)."""

    read: bool = True
    write: bool = True

    @classmethod
    def from_header(cls, value: str | None) -> "CachePolicy":
        directives = {part.strip().lower() for part in (value or "").split(",")}
        return cls(read="no-cache" not in directives, write="no-store" not in directives)


class FingerprintRegistry:
    """The fingerprint each model last answered with, confirmed since its last (re)load."""

    def __init__(self) -> None:
        self._confirmed: dict[str, str] = {}
        self._generation: dict[str, int] = {}

    def confirmed(self, model: str) -> tuple[str | None, int]:
        return self._confirmed.get(model), self._generation.get(model, 0)

    def confirm(self, model: str, fingerprint: str, generation: int) -> None:
        """A response sent at `generation` carried `fingerprint`; a forget since then makes it too old to trust."""
        if self._generation.get(model, 0) == generation:
            self._confirmed[model] = fingerprint

    def forget(self, model: str) -> None:
        self._confirmed.pop(model, None)
        self._generation[model] = self._generation.get(model, 0) + 1


class CacheKeys:
    """Keyed digests of pairs: without the secret, a key cannot be computed from a guessed text."""

    def __init__(self, secret: bytes) -> None:
        self.secret = hashlib.blake2b(secret).digest()[:64]  # BLAKE2b takes keys of up to 64 bytes

    def of(self, scope: str, model: str, fingerprint: str, options: PairOptions, instruction: str | None,
           queries: Sequence[str], documents: Sequence[str]) -> list[bytes]:
        head = hashlib.blake2b(key=self.secret, digest_size=16, person=b"reranker-cache")
        for part in (KEY_VERSION, scope, model, fingerprint, repr(dataclasses.astuple(options)),
                     "\x00none" if instruction is None else "\x01" + instruction):
            _field(head, part)
        by_query: dict[str, hashlib.blake2b] = {}  # a request's query is usually shared by all its documents
        keys = []
        for query, document in zip(queries, documents):
            prefix = by_query.get(query)
            if prefix is None:
                prefix = by_query[query] = head.copy()
                _field(prefix, query)
            digest = prefix.copy()
            digest.update(document.encode("utf-8", "surrogatepass"))  # the last field: the rest, unprefixed
            keys.append(digest.digest())
        return keys


def _field(digest, value: str | bytes) -> None:
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little") + data)  # length-prefixed: ("ab", "c") != ("a", "bc")


class _CountingLRU(cachetools.LRUCache):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda value: ENTRY_BYTES)
        self.evictions = 0

    def popitem(self):  # cachetools evicts through popitem: the documented place to count evictions
        item = super().popitem()
        self.evictions += 1
        return item


class MemoryStore:
    """This process's tier: least recently used out first, within `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self._lru = _CountingLRU(max_bytes)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        lru = self._lru
        return [lru.get(key) for key in keys]  # get() marks an entry as recently used

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Store them; how many older entries this evicted."""
        before = self._lru.evictions
        for key, value in items:
            self._lru[key] = value
        return self._lru.evictions - before

    @property
    def entries(self) -> int:
        return len(self._lru)

    @property
    def bytes(self) -> int:
        return int(self._lru.currsize)


class CircuitBreaker:
    """Closed: try. Open: skip until `retry_s` has passed since the failure, then let one call try."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self.open_since: float | None = None
        self._retry_at = 0.0
        self._trying = False

    def allows(self) -> bool:
        if self.open_since is None:
            return True
        if self._trying or time.monotonic() < self._retry_at:
            return False
        self._trying = True  # one probe at a time; the others go on without Redis meanwhile
        return True

    def failed(self) -> bool:
        """True when this failure starts an outage."""
        started = self.open_since is None
        if started:
            self.open_since = time.monotonic()
        self._retry_at, self._trying = time.monotonic() + self.retry_s, False
        return started

    def succeeded(self) -> float | None:
        """The outage's length when this success ends one."""
        if self.open_since is None:
            return None
        lasted, self.open_since, self._trying = time.monotonic() - self.open_since, None, False
        return lasted


class RedisStore:
    """The shared tier (redis-py's asyncio client): entries expire after `ttl_s` (0: never; Redis's own
    maxmemory policy then bounds it). Every call is bounded by `timeout_s`; failures open the breaker."""

    def __init__(self, url: str, timeout_s: float, retry_s: float, ttl_s: int, metrics: GatewayMetrics) -> None:
        import redis.asyncio
        from redis.backoff import NoBackoff
        from redis.asyncio.retry import Retry

        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,  # no retries: the breaker decides when to retry
        )
        kwargs = self.client.connection_pool.connection_kwargs
        self.where = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        self.metrics = metrics
        self.breaker = CircuitBreaker(retry_s)
        self._writes: set[asyncio.Task] = set()
        self._store = self.client.register_script(STORE_SCRIPT)  # EVALSHA, loaded again after a Redis restart
        metrics.cache_redis_up.set(1)

    async def start(self) -> None:
        """One PING, so an unreachable Redis is reported at start-up rather than at the first request."""
        await self._call("ping", lambda: self.client.ping())

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None] | None:
        """The values, or None when Redis is not asked (breaker open) or fails."""
        return await self._call("get", lambda: self.client.mget([REDIS_PREFIX + key for key in keys]))

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """In the background: a response never waits for Redis to store what it scored."""
        if self.breaker.open_since is not None:  # only reads probe a Redis that failed
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.metrics.cache_redis_errors.labels("set_dropped").inc()
            return
        task = asyncio.create_task(self._call("set", lambda: self._set(items)))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _set(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        await self._store(keys=[REDIS_PREFIX + key for key, _ in items], args=[self.ttl_s, *(v for _, v in items)])

    async def _call(self, operation: str, call):
        if not self.breaker.allows():
            return None
        try:
            result = await asyncio.wait_for(call(), self.timeout_s)
        except Exception as exc:  # any failure of a best-effort tier is a miss, never the request's failure
            self.metrics.cache_redis_errors.labels(operation).inc()
            if self.breaker.failed():
                self.metrics.cache_redis_up.set(0)
                log.warning("Redis at %s failed (%s: %s); the score cache goes on without it, trying again every "
                            "%g s", self.where, type(exc).__name__, exc or "timeout", self.breaker.retry_s)
            return None
        lasted = self.breaker.succeeded()
        if lasted is not None:
            self.metrics.cache_redis_up.set(1)
            log.info("Redis at %s is back after %.1f s; the score cache uses it again", self.where, lasted)
        return result

    async def close(self) -> None:
        for task in list(self._writes):
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self.client.aclose()


class ScoreCache:
    """The cache in front of the model, for `RerankService._score`."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.fingerprints = FingerprintRegistry()
        secret = settings.cache_secret.get_secret_value().encode() if settings.cache_secret else b""
        if not secret and settings.cache_url is None:
            secret = os.urandom(32)  # this process's keys only: no one else needs to compute them
        self.keys = CacheKeys(secret)
        self.memory = MemoryStore(settings.cache_max_bytes) if settings.cache_max_bytes > 0 else None
        self.redis = None
        if settings.cache_url is not None:
            self.redis = RedisStore(settings.cache_url, settings.cache_redis_timeout_s, settings.cache_redis_retry_s,
                                    settings.cache_ttl_s, metrics)
        metrics.watch_cache(self.memory)

    async def start(self) -> None:
        tiers = ([f"in-process, {self.settings.cache_max_bytes / 2**20:g} MiB per process"] if self.memory else [])
        if self.redis is not None:
            tiers.append(f"Redis at {self.redis.where}")
            if not self.settings.cache_secret:
                log.warning("RERANKER_CACHE_SECRET is not set: the score cache's Redis keys are unkeyed digests, so "
                            "whoever can read that Redis can test whether a text they guess was scored")
            await self.redis.start()
        log.info("score cache on: %s; scoped %s", " + ".join(tiers),
                 "per API key" if self.settings.cache_scope == "key" else "shared by all keys")

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()

    async def score(self, model: str, queries: Sequence[str], documents: Sequence[str], instruction: str | None,
                    options: PairOptions, send: Send, policy: CachePolicy, api_key: str | None
                    ) -> tuple[ScoreOutputs, int]:
        """The outputs of every row, in order, and how many came from the cache."""
        scope = (api_key or "") if self.settings.cache_scope == "key" else ""
        fingerprint, generation = self.fingerprints.confirmed(model)
        keys: list[bytes] | None = None
        found: dict[int, bytes] = {}
        if not policy.read:
            self.metrics.cache_skipped.labels("request").inc(len(documents))
        elif fingerprint is None:
            self.metrics.cache_skipped.labels("unconfirmed").inc(len(documents))
        else:
            keys = self.keys.of(scope, model, fingerprint, options, instruction, queries, documents)
            found = await self._get(keys)
            self.metrics.cache_misses.inc(len(documents) - len(found))

        scored: list[tuple[list[int], ScoreOutputs]] = []  # rows and the chunk that scored them
        pending = [i for i in range(len(documents)) if i not in found]
        while pending:
            chunks = await send([queries[i] for i in pending], [documents[i] for i in pending])
            start = 0
            for chunk in chunks:
                scored.append((pending[start:start + len(chunk.score)], chunk))
                start += len(chunk.score)
            answered = {chunk.fingerprint for chunk in chunks}
            if len(answered) == 1 and None not in answered:
                self.fingerprints.confirm(model, next(iter(answered)), generation)
            else:  # replicas that disagree, or a model that reports none: read nothing until one is confirmed
                self.fingerprints.forget(model)
            pending = []
            if found and answered != {fingerprint}:
                # The model no longer serves what the hits were computed under: they are scored again.
                self.metrics.cache_skipped.labels("stale").inc(len(found))
                pending, found = sorted(found), {}

        if policy.write:
            self._put(scope, model, options, instruction, queries, documents, scored, fingerprint, keys)
        return _assemble(len(documents), found, scored), len(found)

    async def _get(self, keys: list[bytes]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        missing = range(len(keys))
        if self.memory is not None:
            values = self.memory.get_many(keys)
            found = {i: value for i, value in enumerate(values) if value is not None}
            self.metrics.cache_hits.labels("memory").inc(len(found))
            missing = [i for i, value in enumerate(values) if value is None]
        if self.redis is not None and missing:
            values = await self.redis.get_many([keys[i] for i in missing])
            if values is not None:
                shared = {i: value for i, value in zip(missing, values) if value is not None and len(value) == ENTRY.itemsize}
                self.metrics.cache_hits.labels("redis").inc(len(shared))
                if self.memory is not None and shared:
                    self._remember([(keys[i], value) for i, value in shared.items()])
                found.update(shared)
        return found

    def _put(self, scope: str, model: str, options: PairOptions, instruction: str | None, queries: Sequence[str],
             documents: Sequence[str], scored: list[tuple[list[int], ScoreOutputs]], fingerprint: str | None,
             keys: list[bytes] | None) -> None:
        items: list[tuple[bytes, bytes]] = []
        for rows, chunk in scored:
            if chunk.fingerprint is None:
                continue
            keep = np.isfinite(chunk.score)  # a broken model's NaN is an error now, not a hit later
            if chunk.fingerprint == fingerprint and keys is not None:
                chunk_keys = [keys[i] for i in rows]
            else:  # stored under what actually computed them
                chunk_keys = self.keys.of(scope, model, chunk.fingerprint, options, instruction,
                                          [queries[i] for i in rows], [documents[i] for i in rows])
            values = _pack(chunk)
            items.extend((key, values[j]) for j, key in enumerate(chunk_keys) if keep[j])
        if not items:
            return
        if self.memory is not None:
            self._remember(items)
        if self.redis is not None:
            self.redis.put_many(items)

    def _remember(self, items: list[tuple[bytes, bytes]]) -> None:
        evicted = self.memory.put_many(items)
        if evicted:
            self.metrics.cache_evictions.inc(evicted)


def _pack(chunk: ScoreOutputs) -> list[bytes]:
    packed = np.empty(len(chunk.score), ENTRY)
    for name in contract.SCORE_OUTPUTS:
        packed[name] = getattr(chunk, name)
    data = packed.tobytes()
    size = ENTRY.itemsize
    return [data[i:i + size] for i in range(0, len(data), size)]


def _assemble(count: int, found: dict[int, bytes], scored: list[tuple[list[int], ScoreOutputs]]) -> ScoreOutputs:
    """Hits and scored rows back in request order, in the dtypes the model answers in."""
    arrays = {name: np.empty(count, DTYPES[name]) for name in contract.SCORE_OUTPUTS}
    if found:
        rows = np.fromiter(found, dtype=np.intp, count=len(found))
        hits = np.frombuffer(b"".join(found.values()), ENTRY)
        for name in contract.SCORE_OUTPUTS:
            arrays[name][rows] = hits[name]
    for rows, chunk in scored:
        for name in contract.SCORE_OUTPUTS:
            arrays[name][rows] = getattr(chunk, name)
    chunks = [chunk for _, chunk in scored]
    fingerprints = {chunk.fingerprint for chunk in chunks}
    return ScoreOutputs(
        *(arrays[name] for name in contract.SCORE_OUTPUTS),
        compute_s=max((c.compute_s for c in chunks), default=0.0),
        round_trip_s=max((c.round_trip_s for c in chunks), default=0.0),
        fingerprint=fingerprints.pop() if len(fingerprints) == 1 else None,
    )
