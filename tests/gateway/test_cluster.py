"""Cluster-wide switching (gateway.fleet.cluster) with several gateways in one
process: each has its own model manager and replica pool over the same
in-memory Tritons, and the calls between gateways go through an in-memory
transport that can make a gateway unreachable. Checked: one switch loads once
per replica and activates everywhere; drains across gateways; switches through
two gateways are serialised; a gateway that missed a switch catches up within
the stated bound; a restarted coordinator recovers the state. The same runs
over HTTP between real processes in tests/integration/test_cluster.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.fleet import discovery
from gateway.fleet.cluster import Cluster, PeerUnreachable
from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.serving.model_manager import ModelManager
from gateway.fleet.pool import TritonPool
from gateway.settings import GatewaySettings
from tests.gateway.fake_backend import FakeTriton
from tests.gateway.test_pool import until

pytestmark = pytest.mark.anyio

COORDINATOR = "http://g0:8000"
FOLLOWER = "http://g1:8000"
POLL_S, PEER_TIMEOUT_S = 0.02, 0.02


class Network:
    """The gateways by URL; one in `down` can neither be reached nor reach another."""

    def __init__(self) -> None:
        self.gateways: dict[str, Cluster] = {}
        self.down: set[str] = set()


class InMemoryPeers:
    """One gateway's calls to the others, as direct method calls over the `Network`."""

    def __init__(self, network: Network, caller: str) -> None:
        self.network = network
        self.caller = caller

    def _to(self, url: str) -> Cluster:
        if {url, self.caller} & self.network.down or url not in self.network.gateways:
            raise PeerUnreachable(f"{url}: connection refused")
        return self.network.gateways[url]

    async def cluster(self, url: str) -> dict:
        return self._to(url).describe()

    async def activate(self, url: str, body: dict) -> dict:
        return await self._to(url).on_activate(body)

    async def switch(self, url: str, body: dict, timeout_s: float) -> dict:
        result = await self._to(url).on_switch(body["model_name"], body["keep_loaded"])
        return {"model": result.model, "previous": result.previous, "load_time_s": result.load_time_s}

    async def close(self) -> None:
        pass


class Gateways:
    """Gateways g0 (the coordinator), g1, ... over the same Tritons."""

    def __init__(self, tritons: dict[str, FakeTriton], count: int = 2, **settings) -> None:
        self.tritons = tritons
        self.network = Network()
        self.urls = [f"http://g{i}:8000" for i in range(count)]
        self.settings = settings
        self.clusters: dict[str, Cluster] = {}
        self.tasks: dict[str, asyncio.Task] = {}

    async def start(self, url: str) -> Cluster:
        settings = GatewaySettings(**{
            "triton_url": ",".join(self.tritons), "default_model": "a", "drain_timeout_s": 5.0,
            "triton_startup_timeout_s": 1.0, "switch_coordinator": COORDINATOR, "advertised_url": url,
            "gateway_peers": ",".join(self.urls), "switch_poll_interval_s": POLL_S, "peer_timeout_s": PEER_TIMEOUT_S,
            **self.settings})
        pool = TritonPool(discovery.Targets(fixed=tuple(self.tritons)), lambda address: self.tritons[address], 5.0,
                          watch_interval_s=0.01, manages_models=settings.is_coordinator)
        await pool.start()
        cluster = Cluster(ModelManager(pool, settings, GatewayMetrics()), pool, settings,
                          InMemoryPeers(self.network, url))
        self.network.gateways[url] = self.clusters[url] = cluster
        self.network.down.discard(url)
        await cluster.start()
        self.tasks[url] = asyncio.create_task(cluster.run())
        return cluster

    async def start_all(self) -> list[Cluster]:
        return [await self.start(url) for url in self.urls]

    def cut_off(self, url: str) -> None:
        self.network.down.add(url)

    async def kill(self, url: str) -> None:
        """The gateway's process ends: its loops stop, and nothing reaches it."""
        self.cut_off(url)
        self.tasks.pop(url).cancel()
        cluster = self.clusters.pop(url)
        await cluster.close()
        await cluster.pool.close()

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for cluster in self.clusters.values():
            await cluster.close()
            await cluster.pool.close()


def tritons_with(*models: str, count: int = 3) -> dict[str, FakeTriton]:
    return {f"t{i}:8101": FakeTriton(*models) for i in range(count)}


def loads(tritons: dict[str, FakeTriton], model: str) -> list[int]:
    return [t.events.count(("load", model)) for t in tritons.values()]


@pytest.fixture
async def gateways():
    made: list[Gateways] = []

    def make(tritons: dict[str, FakeTriton], count: int = 2, **settings) -> Gateways:
        made.append(Gateways(tritons, count, **settings))
        return made[-1]

    yield make
    for group in made:
        await group.close()


async def test_a_switch_through_a_follower_loads_once_per_replica_and_activates_everywhere(gateways):
    tritons = tritons_with("a", "b")
    group = gateways(tritons)
    coordinator, follower = await group.start_all()
    assert coordinator.manager.active == follower.manager.active == "a"
    assert loads(tritons, "a") == [1, 1, 1]  # the coordinator loaded the default; the follower adopted it

    result = await follower.switch("b")
    assert (result.model, result.previous) == ("b", "a")
    # Active on both gateways when the switch answers; loaded once on each replica; a unloaded everywhere.
    assert coordinator.manager.active == follower.manager.active == "b"
    assert coordinator.state == follower.state and coordinator.state.generation == 2
    assert loads(tritons, "b") == [1, 1, 1] and [t.ready() for t in tritons.values()] == [{"b"}] * 3
    async with follower.manager.lease() as model:
        assert model.name == "b"
    # The switch is counted once, by the coordinator that ran it; both report the generation they serve by.
    assert [switches_ok(g, "b") for g in (coordinator, follower)] == [1, 0]
    assert [g.manager.metrics.cluster_generation._value.get() for g in (coordinator, follower)] == [2, 2]


def switches_ok(gateway: Cluster, model: str) -> float:
    return sum(s.value for metric in gateway.manager.metrics.switches.collect() for s in metric.samples
               if s.name == "reranker_model_switches_total" and s.labels == {"model": model, "outcome": "ok"})


async def test_the_old_model_stays_loaded_until_every_gateway_has_drained_it(gateways):
    tritons = tritons_with("a", "b")
    coordinator, follower = await gateways(tritons).start_all()
    release = asyncio.Event()

    async def request_on_follower():
        async with follower.manager.lease() as model:
            await release.wait()
            return model.name

    held = asyncio.create_task(request_on_follower())
    await asyncio.sleep(0)
    switch = asyncio.create_task(coordinator.switch("b"))
    await until(lambda: follower.manager.active == "b")
    await asyncio.sleep(0.05)
    assert not switch.done() and all("a" in t.ready() for t in tritons.values())
    release.set()
    assert await held == "a"
    await switch
    assert [t.ready() for t in tritons.values()] == [{"b"}] * 3


async def test_switches_through_two_gateways_at_once_are_serialised(gateways):
    tritons = tritons_with("a", "b", "c")
    for t in tritons.values():
        t.load_delay_s.update(b=0.03, c=0.03)
    coordinator, follower = await gateways(tritons).start_all()
    first, second = await asyncio.gather(follower.switch("b"), coordinator.switch("c"))
    assert all(t.most_loading_at_once == 1 for t in tritons.values()), "the two switches never overlap"
    # Both succeed, one after the other: the second one's previous is the first one's target.
    assert {(first.previous, first.model), (second.previous, second.model)} in (
        {("a", "b"), ("b", "c")}, {("a", "c"), ("c", "b")})
    final = coordinator.state.active
    assert follower.manager.active == coordinator.manager.active == final and coordinator.state.generation == 3
    assert [t.ready() for t in tritons.values()] == [{final}] * 3


async def test_a_gateway_that_missed_a_switch_catches_up_within_the_bound(gateways):
    tritons = tritons_with("a", "b")
    group = gateways(tritons)
    coordinator, follower = await group.start_all()
    group.cut_off(FOLLOWER)  # the push cannot reach it, nor can it reach the coordinator
    started = time.monotonic()
    await coordinator.switch("b")
    # The coordinator waited the catch-up bound before unloading a, for the gateway it missed.
    assert time.monotonic() - started >= coordinator.settings.catch_up_bound_s
    assert follower.manager.active == "a"
    group.network.down.discard(FOLLOWER)  # reachable again
    healed = time.monotonic()
    await until(lambda: follower.manager.active == "b")
    assert time.monotonic() - healed <= coordinator.settings.catch_up_bound_s
    assert follower.state == coordinator.state


async def test_a_new_gateway_adopts_the_clusters_model_not_its_default(gateways):
    tritons = tritons_with("a", "b")
    group = gateways(tritons, count=3)
    coordinator = await group.start(COORDINATOR)
    await coordinator.switch("b")
    newcomer = await group.start("http://g2:8000")  # its default_model is a
    assert newcomer.manager.active == "b" and newcomer.state == coordinator.state
    assert loads(tritons, "a") == [1, 1, 1]


async def test_a_restarted_coordinator_takes_the_newest_state_from_the_gateways(gateways):
    tritons = tritons_with("a", "b", "c")
    group = gateways(tritons)
    coordinator, follower = await group.start_all()
    await coordinator.switch("b", keep_loaded=True)
    await coordinator.switch("c", keep_loaded=True)
    before = coordinator.state
    await group.kill(COORDINATOR)
    restarted = await group.start(COORDINATOR)  # a new process: new epoch, nothing in memory
    assert restarted.state.epoch != before.epoch
    assert (restarted.state.generation, restarted.state.active, restarted.state.loaded) == (
        before.generation, "c", ("c", "b", "a"))
    assert restarted.manager.active == "c" and restarted.pool.wanted == {"a", "b", "c"}
    await until(lambda: follower.state == restarted.state)  # a new epoch is adopted even at the same generation
    result = await follower.switch("a")
    assert (result.previous, restarted.state.generation) == ("c", before.generation + 1)
    assert [t.ready() for t in tritons.values()] == [{"a", "b"}] * 3  # c unloaded; b stays kept


async def test_a_coordinator_alone_recovers_from_what_triton_has_ready(gateways):
    tritons = tritons_with("a", "b")
    for t in tritons.values():
        await t.load("b")
    coordinator = await gateways(tritons).start(COORDINATOR)  # its peer g1 is not up
    assert coordinator.state.active == "b" and coordinator.state.generation == 1
    assert loads(tritons, "a") == [0, 0, 0], "the default is not loaded over what Triton already serves"


async def test_a_follower_without_a_coordinator_serves_nothing_until_it_comes(gateways):
    tritons = tritons_with("a")
    group = gateways(tritons)
    follower = await group.start(FOLLOWER)
    assert follower.manager.active is None and loads(tritons, "a") == [0, 0, 0]
    with pytest.raises(GatewayError) as refused:
        await follower.switch("a")
    assert refused.value.kind is ErrorKind.COORDINATOR_UNAVAILABLE and COORDINATOR in refused.value.message
    await group.start(COORDINATOR)
    await until(lambda: follower.manager.active == "a")


async def test_peer_calls_a_gateway_cannot_take_are_refused(gateways):
    tritons = tritons_with("a")
    coordinator, follower = await gateways(tritons).start_all()
    with pytest.raises(GatewayError) as not_coordinator:
        await follower.on_switch("a", keep_loaded=False)
    assert not_coordinator.value.kind is ErrorKind.NOT_THE_COORDINATOR and COORDINATOR in not_coordinator.value.message
    foreign = {**coordinator.state.as_dict(), "generation": 99, "from_instance": "someone-else",
               "drain_timeout_s": 1.0}
    with pytest.raises(GatewayError) as two_coordinators:
        await coordinator.on_activate(foreign)
    assert two_coordinators.value.kind is ErrorKind.NOT_THE_COORDINATOR
    # An activation older than what a follower has is ignored.
    stale = {**follower.state.as_dict(), "generation": 0, "active": "zzz"}
    assert await follower.adopt(type(follower.state).from_dict(stale)) == [] and follower.manager.active == "a"


async def test_a_default_that_cannot_load_is_not_retried_every_tick_and_a_switch_still_works(gateways):
    tritons = tritons_with("a", "b")
    for t in tritons.values():
        t.failing_loads.add("a")
    coordinator = await gateways(tritons).start(COORDINATOR)
    assert coordinator.state is None and coordinator.manager.active is None
    await asyncio.sleep(10 * POLL_S)
    assert loads(tritons, "a") == [1, 1, 1], "tried once, not at every poll interval"
    result = await coordinator.switch("b")
    assert (result.model, coordinator.state.generation, coordinator.manager.active) == ("b", 1, "b")
