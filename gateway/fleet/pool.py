"""Many Triton replicas behind one `InferenceBackend`: discovery, balancing,
retries, and replicas that join or come back.

- The replicas come from `RERANKER_TRITON_URL` (a list, or a DNS name looked
  up again every `triton_resolve_interval_s`); each gets its own gRPC client.
- Every `triton_watch_interval_s` each replica is asked whether it is live and
  which models it has READY. A request for a model goes to the live replica
  with that model READY and the fewest requests outstanding from this gateway.
- A request that fails because its replica is gone (connection error,
  UNAVAILABLE) or has lost the model (a restart: NOT_FOUND, "not ready") takes
  that replica out of the rotation and is tried again on another one, within
  what is left of its deadline: scoring is idempotent, so a replica dying
  mid-request costs the client nothing but time. Other failures (bad input,
  deadline, a full queue) are answered as they are.
- Loads and unloads go to every live replica. A pool that `manages_models`
  (a gateway alone, or the switch coordinator) also loads its wanted models -
  those loaded through it and not unloaded since - onto a replica that joins
  or comes back empty. Such a replica takes requests for a model only once it
  reports that model READY. Other gateways of a cluster only watch: the
  coordinator alone loads, so two gateways never make Triton load a model
  twice (a second load reloads it from scratch).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from gateway.fleet import discovery
from gateway.errors import ErrorKind, GatewayError
from gateway.serving.triton import InferenceBackend, ModelState, PairOptions, ScoreOutputs
from rerank_engine.model_config import ModelConfig

log = logging.getLogger(__name__)

RETRYABLE = (ErrorKind.BACKEND_UNAVAILABLE, ErrorKind.MODEL_NOT_READY)
"""Failures that say "this replica cannot serve this model now", not "this request is bad"."""

LOAD_RETRY_S = 30.0
"""A wanted model that failed to load on a replica is tried there again after this long, not every tick."""


@dataclass(eq=False)
class Replica:
    address: str
    client: InferenceBackend
    live: bool = False
    ready: set[str] = field(default_factory=set)  # models READY there, as last seen
    outstanding: int = 0  # this gateway's requests in flight there
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one repository action at a time
    failed_loads: dict[str, float] = field(default_factory=dict)  # model -> when its load last failed
    syncing: asyncio.Task | None = None
    actions: int = 0  # loads and unloads done through this pool: a look that spans one is out of date


class TritonPool:
    """`InferenceBackend` over every Triton replica found at `targets`."""

    def __init__(self, targets: discovery.Targets, connect: Callable[[str], InferenceBackend],
                 request_timeout_s: float, watch_interval_s: float = 1.0, resolve_interval_s: float = 5.0,
                 manages_models: bool = True) -> None:
        self.targets = targets
        self.connect = connect
        self.request_timeout_s = request_timeout_s
        self.watch_interval_s = watch_interval_s
        self.resolve_interval_s = resolve_interval_s
        self.manages_models = manages_models
        self.replicas: dict[str, Replica] = {}
        self.wanted: set[str] = set()  # what a managing pool keeps loaded on every replica
        self._turn = itertools.count()  # breaks ties between equally loaded replicas in turn
        self._watcher: asyncio.Task | None = None
        self._retired: set[Replica] = set()  # left the DNS answer; closed once their requests finish
        self._resolved_at = -float("inf")
        # Told a model's name whenever a replica gains or loses it (a load, a restart, a replica that comes or
        # goes): what answers for the model may have changed, and the score cache confirms its fingerprint again.
        self.on_model_change: Callable[[str], None] = lambda model: None

    # --- life cycle
    async def start(self) -> None:
        """Find the replicas and look at each once, then keep watching in the background."""
        await self._resolve()
        await self.check_all()
        self._watcher = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for replica in [*self.replicas.values(), *self._retired]:
            if replica.syncing is not None:
                replica.syncing.cancel()
            await replica.client.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.watch_interval_s)
            try:
                if time.monotonic() - self._resolved_at >= self.resolve_interval_s:
                    await self._resolve()
                await self.check_all()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad tick
                log.exception("watching the Triton replicas failed; trying again")

    async def _resolve(self) -> None:
        self._resolved_at = time.monotonic()
        try:
            addresses = await discovery.resolve(self.targets)
        except OSError as exc:  # keep the replicas we know; the next look-up may work
            log.warning("could not resolve %s (%s); keeping %d known replicas", self.targets.describe, exc,
                        len(self.replicas))
            return
        for address in addresses:
            if address not in self.replicas:
                log.info("Triton replica %s found", address)
                self.replicas[address] = Replica(address, self.connect(address))
        for address in [a for a in self.replicas if a not in addresses]:
            log.info("Triton replica %s left %s; no new requests go to it", address, self.targets.describe)
            self._retired.add(self.replicas.pop(address))
        for replica in [r for r in self._retired if r.outstanding == 0]:
            self._retired.discard(replica)
            if replica.syncing is not None:
                replica.syncing.cancel()
            await replica.client.close()

    async def check_all(self) -> None:
        await asyncio.gather(*(self._check(replica) for replica in list(self.replicas.values())))

    async def _check(self, replica: Replica) -> None:
        """Is it live, and what has it READY; a managing pool then loads what it lacks."""
        was_live, actions, before = replica.live, replica.actions, set(replica.ready)
        states = None
        if await replica.client.is_live():
            try:
                states = await replica.client.repository()
            except GatewayError:
                pass
        if states is None:
            if was_live:
                log.warning("Triton replica %s is down; its requests go to the others", replica.address)
            replica.live = False
            replica.ready.clear()
            self._changed(before)
            return
        if replica.actions == actions:  # else a load or unload finished meanwhile and knows better
            replica.ready = {s.name for s in states if s.state == "READY"}
            self._changed(before ^ replica.ready)
        replica.live = True
        if not was_live:
            log.info("Triton replica %s is live with %s READY", replica.address, sorted(replica.ready) or "nothing")
        busy = {s.name for s in states if s.state in ("LOADING", "UNLOADING")}
        if self.manages_models and self.wanted - replica.ready - busy and (
                replica.syncing is None or replica.syncing.done()):
            replica.syncing = asyncio.create_task(self._sync(replica))

    async def _sync(self, replica: Replica) -> None:
        """Load the wanted models a (new or restarted) replica lacks; until then it gets no requests for them."""
        for model in sorted(self.wanted):
            failed_at = replica.failed_loads.get(model)
            if failed_at is not None and time.monotonic() - failed_at < LOAD_RETRY_S:
                continue
            try:
                if await self._load_on(replica, model):
                    log.info("Triton replica %s: loaded %s; it takes requests for it now", replica.address, model)
            except GatewayError as exc:
                replica.failed_loads[model] = time.monotonic()
                log.error("Triton replica %s could not load %s: %s", replica.address, model, exc.message)

    # --- repository actions on every replica
    async def _load_on(self, replica: Replica, model: str) -> bool:
        async with replica.lock:
            if model not in self.wanted:  # unloaded while this waited for the lock
                return False
            loaded = await replica.client.load(model)
            replica.ready.add(model)
            if loaded:
                self.on_model_change(model)
            replica.actions += 1
            replica.failed_loads.pop(model, None)
            return loaded

    def _live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.live]

    async def load(self, model: str) -> bool:
        """Load `model` on every live replica (concurrently); a replica that joins later gets it too.

        A replica that turns out to be down is skipped (it gets the model when it comes back). If the model
        fails to load anywhere, it is unloaded again where this call loaded it, and the error is raised.
        """
        if not self._live():
            await self.check_all()
        live = self._live()
        if not live:
            raise self._none_live()
        was_wanted = model in self.wanted
        self.wanted.add(model)
        outcomes = await asyncio.gather(*(self._load_on(r, model) for r in live), return_exceptions=True)
        failures = [(r, o) for r, o in zip(live, outcomes) if isinstance(o, BaseException)]
        for replica, failure in failures:
            if isinstance(failure, GatewayError) and failure.kind is ErrorKind.BACKEND_UNAVAILABLE:
                replica.live = False
                replica.ready.discard(model)
        hard = [(r, o) for r, o in failures if not (isinstance(o, GatewayError)
                                                     and o.kind is ErrorKind.BACKEND_UNAVAILABLE)]
        if hard or len(failures) == len(live):
            if not was_wanted:
                self.wanted.discard(model)
                await asyncio.gather(*(self._unload_on(r, model) for r, o in zip(live, outcomes) if o is True),
                                     return_exceptions=True)
            replica, error = (hard or failures)[0]
            if isinstance(error, GatewayError):
                error.message = f"{error.message} (Triton replica {replica.address})"
                raise error
            raise error
        return any(o is True for o in outcomes)

    async def _unload_on(self, replica: Replica, model: str) -> None:
        async with replica.lock:
            replica.ready.discard(model)
            replica.actions += 1
            self.on_model_change(model)
            await replica.client.unload(model)

    async def unload(self, model: str) -> None:
        """Unload `model` from every live replica; it is no longer loaded onto replicas that join."""
        self.wanted.discard(model)
        outcomes = await asyncio.gather(*(self._unload_on(r, model) for r in self._live()), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, GatewayError) and o.kind is not ErrorKind.BACKEND_UNAVAILABLE]
        if errors:
            raise errors[0]

    def want(self, models: Iterable[str]) -> None:
        """The models a managing pool keeps loaded, as a whole (a coordinator that recovered its state)."""
        self.wanted = set(models)

    # --- InferenceBackend
    async def is_live(self) -> bool:
        if not self._live():
            await self.check_all()  # nothing known live: ask now rather than answer from the last tick
        return bool(self._live())

    async def repository(self) -> list[ModelState]:
        """Every model any live replica knows; READY where any live replica has it READY."""
        live = self._live()
        if not live:
            raise self._none_live()
        states: dict[str, str] = {}
        failures = []
        for replica in live:
            try:
                for state in await replica.client.repository():
                    if states.get(state.name) != "READY":
                        states[state.name] = state.state
            except GatewayError as exc:
                failures.append(exc)
        if failures and len(failures) == len(live):
            raise failures[0]
        return [ModelState(name, state) for name, state in sorted(states.items())]

    async def is_ready(self, model: str) -> bool:
        """Whether a request for `model` can be served now: a live replica has it READY."""
        return any(model in r.ready for r in self._live())

    async def model_config(self, model: str) -> ModelConfig:
        holders = [r for r in self._live() if model in r.ready] or self._live()
        if not holders:
            raise self._none_live()
        return await holders[0].client.model_config(model)

    async def score(self, model: str, queries: Sequence[str], documents: Sequence[str],
                    instruction: str | None = None, options: PairOptions = PairOptions(),
                    timeout_s: float | None = None, priority_level: int = 0) -> ScoreOutputs:
        """On the least busy replica that has the model; retried on another within the deadline (`timeout_s`,
        default the request timeout) when a replica fails it by going away."""
        deadline = time.monotonic() + (self.request_timeout_s if timeout_s is None else timeout_s)
        tried: set[Replica] = set()
        last_error: GatewayError | None = None
        while True:
            replica = self._pick(model, tried)
            if replica is None:
                raise last_error or self._no_replica_for(model)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise last_error or GatewayError(ErrorKind.BACKEND_TIMEOUT, f"scoring with {model}: deadline spent")
            tried.add(replica)
            replica.outstanding += 1
            try:
                return await replica.client.score(model, queries, documents, instruction, options,
                                                  timeout_s=remaining, priority_level=priority_level)
            except GatewayError as exc:
                if exc.kind not in RETRYABLE:
                    raise
                self._lost(replica, model, exc)
                last_error = exc
            finally:
                replica.outstanding -= 1

    def _pick(self, model: str, tried: set[Replica]) -> Replica | None:
        candidates = [r for r in self.replicas.values() if r.live and model in r.ready and r not in tried]
        if not candidates:
            return None
        # Fewest outstanding first; among equals, take turns (a fixed order would pile onto the first).
        start = next(self._turn) % len(candidates)
        return min(candidates[start:] + candidates[:start], key=lambda r: r.outstanding)

    def _lost(self, replica: Replica, model: str, error: GatewayError) -> None:
        """Take the replica (or just this model on it) out of the rotation until the watcher sees it again."""
        if error.kind is ErrorKind.BACKEND_UNAVAILABLE:
            if replica.live:
                log.warning("Triton replica %s failed a request (%s); retrying elsewhere", replica.address,
                            error.message)
            self._changed(replica.ready)
            replica.live = False
            replica.ready.clear()
        else:
            log.warning("Triton replica %s has lost %s (%s); retrying elsewhere", replica.address, model,
                        error.message)
            replica.ready.discard(model)
            self.on_model_change(model)

    def _changed(self, models: Iterable[str]) -> None:
        for model in sorted(models):
            self.on_model_change(model)

    def _none_live(self) -> GatewayError:
        known = ", ".join(sorted(self.replicas)) or f"none found at {self.targets.describe}"
        return GatewayError(ErrorKind.BACKEND_UNAVAILABLE, f"no Triton replica is reachable (known: {known})")

    def _no_replica_for(self, model: str) -> GatewayError:
        if not self._live():
            return self._none_live()
        return GatewayError(ErrorKind.MODEL_NOT_READY, f"model {model} is not READY on any live Triton replica "
                                                       f"({len(self._live())} live)")

    def describe(self) -> list[dict]:
        """Each replica as this gateway sees it (for /internal/cluster and the logs)."""
        return [{"address": r.address, "live": r.live, "ready": sorted(r.ready), "outstanding": r.outstanding}
                for r in sorted(self.replicas.values(), key=lambda r: r.address)]
