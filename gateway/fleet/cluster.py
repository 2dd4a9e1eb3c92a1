"""Model switching across many gateways and Triton replicas, run by one
gateway: the coordinator (`RERANKER_SWITCH_COORDINATOR`; in Kubernetes the
StatefulSet's pod 0).

The cluster's state is small: the active model, the models kept loaded, and a
generation number that grows with every switch (with the epoch of the
coordinator process that made it). The coordinator holds it and runs one
switch at a time:

1. load the target on every Triton replica (gateway.fleet.pool);
2. make it active on itself and on every gateway (`POST /internal/activate`,
   all at once): new requests use it from then on;
3. wait until every gateway has drained its requests on the old model (or
   drain_timeout_s);
4. unload the old model everywhere, unless keep_loaded.

A `/switch_model` that reaches another gateway is forwarded to the
coordinator, so two switches through two gateways queue on its lock: both
succeed, one after the other, as two switches through one gateway always did.

A gateway that missed step 2 (down, restarting, new, or a lost call) asks the
coordinator for its state every switch_poll_interval_s and catches up; a
coordinator that missed a gateway waits that long before step 4. So two
gateways that can reach the coordinator disagree about the active model for
at most `settings.catch_up_bound_s` (1 + 2 x 2 = 5 s by default); those the
push reached switch within its round trip. A restarted coordinator takes the
state of the gateways (the highest generation), else what Triton has READY,
else switches to the default model.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import httpx

from gateway.fleet import discovery
from gateway.errors import ErrorKind, GatewayError
from gateway.serving.model_manager import ModelManager, SwitchResult
from gateway.fleet.pool import LOAD_RETRY_S, TritonPool
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "/internal"
"""Every call between gateways lives under this path: one prefix to keep from clients (admin-only)."""


@dataclass(frozen=True)
class ClusterState:
    epoch: str  # the coordinator process that made it: a restarted coordinator starts a new epoch
    generation: int  # one more with every switch
    active: str | None
    loaded: tuple[str, ...]  # the active model first, then those kept loaded

    def supersedes(self, other: "ClusterState | None") -> bool:
        """Newer than `other`: a later switch of the same coordinator, or any state of a new one."""
        if other is None:
            return True
        return self.epoch != other.epoch or self.generation > other.generation

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "generation": self.generation, "active": self.active,
                "loaded": list(self.loaded)}

    @classmethod
    def from_dict(cls, data: dict) -> "ClusterState":
        return cls(str(data["epoch"]), int(data["generation"]), data.get("active"), tuple(data.get("loaded", ())))


class PeerUnreachable(Exception):
    pass


class PeerCalls(Protocol):
    """The calls between gateways: HTTP in production (`HttpPeers`), in memory in the unit tests."""

    async def cluster(self, url: str) -> dict: ...

    async def activate(self, url: str, body: dict) -> dict: ...

    async def switch(self, url: str, body: dict, timeout_s: float) -> dict: ...

    async def close(self) -> None: ...


class HttpPeers:
    def __init__(self, api_key: str, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        # trust_env off: calls between gateways stay inside the cluster, never through an HTTP(S)_PROXY
        # that the environment may set for outbound traffic.
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s, trust_env=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, url: str, timeout_s: float, body: dict | None = None) -> dict:
        try:
            response = await self._client.request(method, url, json=body, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status_code == 200:
            return response.json()
        try:
            error = response.json()
            kind = ErrorKind(error["error_type"])
        except (ValueError, KeyError):
            raise PeerUnreachable(f"{url}: HTTP {response.status_code}: {response.text[:200]}") from None
        raise GatewayError(kind, error.get("error", ""), error.get("field"))

    async def cluster(self, url: str) -> dict:
        return await self._call("GET", f"{url}{INTERNAL_PREFIX}/cluster", self.timeout_s)

    async def activate(self, url: str, body: dict) -> dict:
        # The answer comes once the peer has drained the old model: as long as a drain may take.
        return await self._call("POST", f"{url}{INTERNAL_PREFIX}/activate", body["drain_timeout_s"] + self.timeout_s,
                                body)

    async def switch(self, url: str, body: dict, timeout_s: float) -> dict:
        return await self._call("POST", f"{url}{INTERNAL_PREFIX}/switch", timeout_s, body)


class Cluster:
    """This gateway's part in cluster-wide switching: the coordinator's, or a follower's."""

    def __init__(self, manager: ModelManager, pool: TritonPool, settings: GatewaySettings, peers: PeerCalls) -> None:
        self.manager = manager
        self.pool = pool
        self.settings = settings
        self.peers = peers
        self.peer_targets = discovery.parse_targets(settings.gateway_peers, urls=True)
        self.instance = uuid.uuid4().hex  # tells a gateway's own entry among the peers apart
        self.epoch = f"{int(time.time())}-{self.instance[:8]}"
        self.state: ClusterState | None = None
        self._switch_lock = asyncio.Lock()
        self._adopt_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()
        self._coordinator_reachable = True
        self._establish_again_at = 0.0

    @property
    def is_coordinator(self) -> bool:
        return self.settings.is_coordinator

    # --- life cycle
    async def start(self) -> None:
        """Coordinator: wait for Triton and establish the state. Follower: ask the coordinator once;
        either way `run()` keeps trying in the background."""
        if self.is_coordinator:
            if await self.manager.wait_for_triton():
                await self._establish_logged()
            return
        await self.poll()
        if self.settings.worker_index is None:
            return  # a gateway of its own: it serves (503 until it has a model) while it catches up
        # A worker of one gateway takes no request before it serves by the coordinator's state: its socket
        # queues the connections meanwhile. The coordinator may be loading the first model (minutes for 8B).
        deadline = time.monotonic() + self.settings.triton_startup_timeout_s + self.settings.model_load_timeout_s
        while self.state is None and time.monotonic() < deadline:
            await asyncio.sleep(self.settings.switch_poll_interval_s / 4)
            await self.poll()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.switch_poll_interval_s)
            try:
                if not self.is_coordinator:
                    await self.poll()
                elif (self.state is None and time.monotonic() >= self._establish_again_at
                      and await self.pool.is_live()):
                    await self._establish_logged()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one failure
                log.exception("cluster background step failed; trying again")

    async def close(self) -> None:
        for task in self._background:
            task.cancel()
        await self.peers.close()

    async def peer_urls(self) -> list[str]:
        try:
            return await discovery.resolve_urls(self.peer_targets)
        except OSError as exc:
            log.warning("could not resolve the gateway peers %s: %s", self.peer_targets.describe, exc)
            return []

    def describe(self) -> dict:
        """What `GET /internal/cluster` answers: this gateway's view, read by followers, a restarted
        coordinator and the tests."""
        state = self.state.as_dict() if self.state else {"epoch": None, "generation": 0, "active": None,
                                                           "loaded": []}
        return {**state, "instance": self.instance, "advertised_url": self.settings.advertised_url,
                "coordinator": self.settings.switch_coordinator,
                "role": "coordinator" if self.is_coordinator else "follower",
                "serving": self.manager.active, "replicas": self.pool.describe()}

    # --- the coordinator
    async def _establish_logged(self) -> None:
        async with self._switch_lock:
            if self.state is not None:
                return
            try:
                await self._establish()
            except GatewayError as exc:
                # A model that cannot load is not tried again every second; a switch can fix it meanwhile.
                self._establish_again_at = time.monotonic() + LOAD_RETRY_S
                log.error("could not establish the cluster's active model (trying again in %.0f s): %s",
                          LOAD_RETRY_S, exc.message)

    async def _establish(self) -> None:
        """The state after a (re)start: the gateways' newest, else what Triton has READY, else the default."""
        answers = await asyncio.gather(*(self.peers.cluster(url) for url in await self.peer_urls()),
                                       return_exceptions=True)
        known = [a for a in answers if isinstance(a, dict) and a.get("instance") != self.instance
                 and a.get("active") and a.get("epoch")]
        if known:
            best = max(known, key=lambda a: a["generation"])
            recovered = ClusterState(self.epoch, best["generation"], best["active"], tuple(best["loaded"]))
            source = f"gateway {best['advertised_url']} (generation {best['generation']})"
        else:
            ready = [m.name for m in await self.pool.repository() if m.state == "READY"]
            if not ready:
                log.info("no gateway or Triton replica has a model: switching to the default %s",
                         self.settings.default_model)
                # Nobody serves anything yet, so nobody is told: every gateway catches up by polling. (Workers
                # of one gateway could not answer now anyway: they wait for this state before serving.)
                result = await self._coordinate(self.settings.default_model, keep_loaded=False, push=False)
                log.info("active model %s (loaded in %.1f s)", result.model, result.load_time_s)
                return
            default = self.manager.known_name(self.settings.default_model)
            active = default if default in ready else ready[0]
            recovered = ClusterState(self.epoch, 1, active, (active, *[m for m in ready if m != active]))
            source = "the models READY on Triton"
        self.pool.want(recovered.loaded)
        for model in recovered.loaded:
            await self.manager.ensure_loaded(model)  # replicas that lack it (a restart meanwhile) get it
        await self.manager.activate(recovered.active)
        self._serve_by(recovered)
        log.info("cluster state from %s: active %s, loaded %s", source, recovered.active, list(recovered.loaded))

    async def _coordinate(self, requested: str, keep_loaded: bool, push: bool = True) -> SwitchResult:
        """One cluster-wide switch; the caller holds the switch lock. `push`: tell the other gateways now."""
        target = await self.manager.resolve(requested)
        state = self.state
        previous = state.active if state else None
        load_time = await self.manager.ensure_loaded(target)  # every live replica; joiners get it later
        retire = previous if previous and previous != target and not keep_loaded else None
        kept = [m for m in (state.loaded if state else ()) if m not in (target, retire)]
        if keep_loaded and previous and previous not in kept and previous != target:
            kept.append(previous)
        loaded = (target, *kept)
        if state is not None and (state.active, state.loaded) == (target, loaded):
            return SwitchResult(target, previous, load_time)  # nothing changes: no new generation
        new = ClusterState(self.epoch, (state.generation if state else 0) + 1, target, loaded)
        await self.manager.activate(target)
        self._serve_by(new)
        started = time.monotonic()
        urls = [url for url in await self.peer_urls() if url != self.settings.advertised_url] if push else []
        body = {**new.as_dict(), "from_instance": self.instance, "drain_timeout_s": self.settings.drain_timeout_s}
        local_drain = self.manager.retire(retire) if retire else _nothing()
        _, *answers = await asyncio.gather(local_drain, *(self._push(url, body) for url in urls))
        missed = [url for url, answer in zip(urls, answers) if answer is None]
        log.info("generation %d: %s active on this gateway and %d of %d peers in %.3f s%s", new.generation, target,
                 len(urls) - len(missed), len(urls), time.monotonic() - started,
                 f"; missed {missed}" if missed else "")
        if retire:
            if missed:
                # They catch up by polling: give them that long to move their new requests off `retire`.
                await asyncio.sleep(self.settings.catch_up_bound_s)
            await self.manager.unload(retire)
        return SwitchResult(target, previous, load_time)

    async def _push(self, url: str, body: dict) -> dict | None:
        """Activate on one peer and wait for its drain; None if it could not be reached or refused."""
        try:
            return await self.peers.activate(url, body)
        except (PeerUnreachable, GatewayError) as exc:
            log.warning("gateway %s missed generation %d (%s); it catches up by polling", url, body["generation"],
                        getattr(exc, "message", exc))
            return None

    def _serve_by(self, state: ClusterState) -> None:
        self.state = state
        self.manager.metrics.cluster_generation.set(state.generation)

    # --- what every gateway does
    async def switch(self, requested: str, keep_loaded: bool = False) -> SwitchResult:
        """`/switch_model` on any gateway: forwarded to the coordinator, which runs it (and counts it in
        its metrics: each switch once, wherever it came in)."""
        if not self.is_coordinator:
            return await self._forward(requested, keep_loaded)
        target = await self.manager.resolve(requested)  # an unknown name is refused before it is counted
        started = time.perf_counter()
        try:
            async with self._switch_lock:
                result = await self._coordinate(target, keep_loaded)
        except GatewayError:
            self.manager.metrics.switched(target, time.perf_counter() - started, ok=False)
            raise
        self.manager.metrics.switched(result.model, time.perf_counter() - started, ok=True)
        return result

    async def _forward(self, requested: str, keep_loaded: bool) -> SwitchResult:
        coordinator = self.settings.switch_coordinator
        # Long enough to queue behind another switch, load, drain and let a missed gateway catch up.
        timeout_s = 2 * (self.settings.model_load_timeout_s + self.settings.drain_timeout_s
                         + self.settings.catch_up_bound_s)
        try:
            answer = await self.peers.switch(coordinator, {"model_name": requested, "keep_loaded": keep_loaded},
                                             timeout_s)
        except PeerUnreachable as exc:
            raise GatewayError(ErrorKind.COORDINATOR_UNAVAILABLE,
                               f"the switch coordinator {coordinator} (RERANKER_SWITCH_COORDINATOR) is unreachable, "
                               f"so no switch can run now; new requests keep the active model ({exc})") from None
        result = SwitchResult(answer["model"], answer.get("previous"), answer.get("load_time_s", 0.0))
        if self.manager.active != result.model:
            await self.poll()  # the coordinator's push should have come first; make sure before answering
        return result

    async def on_switch(self, requested: str, keep_loaded: bool) -> SwitchResult:
        """`POST /internal/switch`: a switch forwarded by another gateway."""
        if not self.is_coordinator:
            raise GatewayError(ErrorKind.NOT_THE_COORDINATOR,
                               f"this gateway ({self.settings.advertised_url}) is not the switch coordinator; "
                               f"the coordinator is {self.settings.switch_coordinator}")
        return await self.switch(requested, keep_loaded)

    async def on_activate(self, body: dict) -> dict:
        """`POST /internal/activate` from the coordinator: adopt its state, drain what leaves, answer."""
        if body.get("from_instance") == self.instance:
            return {"instance": self.instance, "self": True}  # the coordinator found itself among the peers
        if self.is_coordinator:
            raise GatewayError(ErrorKind.NOT_THE_COORDINATOR,
                               "this gateway is the switch coordinator and takes no activation from another; "
                               "check RERANKER_SWITCH_COORDINATOR and RERANKER_ADVERTISED_URL on every gateway")
        leaving = await self.adopt(ClusterState.from_dict(body))
        drained = await asyncio.gather(*(self.manager.retire(model) for model in leaving))
        return {"instance": self.instance, "generation": self.state.generation if self.state else 0,
                "drained": all(drained)}

    async def poll(self) -> None:
        """A follower's catch-up: adopt the coordinator's state if it is newer than ours."""
        try:
            answer = await self.peers.cluster(self.settings.switch_coordinator)
        except (PeerUnreachable, GatewayError) as exc:
            if self._coordinator_reachable:
                log.warning("the switch coordinator %s is unreachable (%s); keeping generation %s",
                            self.settings.switch_coordinator, getattr(exc, "message", exc),
                            self.state.generation if self.state else None)
            self._coordinator_reachable = False
            return
        if not self._coordinator_reachable:
            log.info("the switch coordinator %s is reachable again", self.settings.switch_coordinator)
        self._coordinator_reachable = True
        if not answer.get("active") or not answer.get("epoch"):
            return  # it has no state yet
        for model in await self.adopt(ClusterState.from_dict(answer)):
            task = asyncio.create_task(self.manager.retire(model))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def adopt(self, state: ClusterState) -> list[str]:
        """Make `state`'s model active here if `state` is newer than ours; the models leaving this gateway."""
        async with self._adopt_lock:
            if not state.supersedes(self.state) or state.active is None:
                return []
            await self.pool.check_all()  # see the replicas as they are now: the coordinator has just loaded
            await self.manager.activate(state.active)
            previous = self.state
            self._serve_by(state)
            log.info("generation %d: %s active (was %s)", state.generation, state.active,
                     previous.active if previous else None)
            return [m for m in list(self.manager.loaded) if m not in state.loaded]


async def _nothing() -> None:
    return None
