"""The Triton replica pool against in-memory Tritons (tests/gateway/fake_backend.py):
balancing by outstanding requests, a replica dying mid-request, one restarted
empty, one joining, loads and unloads on every replica. The same behaviours
run against real tritonserver processes in tests/integration/test_cluster.py."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fleet import discovery
from gateway.errors import ErrorKind, GatewayError
from gateway.fleet.pool import TritonPool
from tests.gateway.fake_backend import FakeTriton

pytestmark = pytest.mark.anyio


def pool_of(tritons: dict[str, FakeTriton], manages_models: bool = True, timeout_s: float = 5.0) -> TritonPool:
    return TritonPool(discovery.Targets(fixed=tuple(tritons)), lambda address: tritons[address], timeout_s,
                      watch_interval_s=0.01, resolve_interval_s=0.01, manages_models=manages_models)


async def until(condition, timeout_s: float = 2.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    assert condition()


def three(*models: str) -> dict[str, FakeTriton]:
    return {f"t{i}:8101": FakeTriton(*models) for i in range(3)}


async def test_requests_go_to_the_replica_with_the_fewest_outstanding():
    tritons = three("a")
    pool = pool_of(tritons)
    await pool.start()
    try:
        assert await pool.load("a") is True
        hold = asyncio.Event()
        for t in tritons.values():
            t.hold_scoring = hold
        requests = [asyncio.create_task(pool.score("a", ["q"], ["d"])) for _ in range(6)]
        await until(lambda: sum(len([e for e in t.events if e[0] == "score"]) for t in tritons.values()) == 6)
        assert [len([e for e in t.events if e[0] == "score"]) for t in tritons.values()] == [2, 2, 2]
        hold.set()
        await asyncio.gather(*requests)
        assert [r["outstanding"] for r in pool.describe()] == [0, 0, 0]
    finally:
        await pool.close()


async def test_a_replica_that_dies_mid_request_costs_no_request():
    tritons = three("a")
    pool = pool_of(tritons)
    await pool.start()
    try:
        await pool.load("a")
        hold = asyncio.Event()
        for t in tritons.values():
            t.hold_scoring = hold
        requests = [asyncio.create_task(pool.score("a", ["q"], ["d"])) for _ in range(9)]
        await until(lambda: all(len(t.events) >= 4 for t in tritons.values()))  # load + 3 scores each
        victim = tritons["t1:8101"]
        victim.crash()  # its three requests fail with "Socket closed"; each is tried again elsewhere
        await asyncio.sleep(0.01)
        hold.set()
        outputs = await asyncio.gather(*requests)
        assert len(outputs) == 9 and victim.scored == 0
        assert tritons["t0:8101"].scored + tritons["t2:8101"].scored == 9
        assert not next(r for r in pool.describe() if r["address"] == "t1:8101")["live"]
    finally:
        await pool.close()


async def test_a_replica_restarted_empty_gets_the_models_again_before_it_takes_requests():
    tritons = three("a")
    pool = pool_of(tritons)
    await pool.start()
    try:
        await pool.load("a")
        restarted = tritons["t2:8101"]
        restarted.crash()
        restarted.restart()  # back before the watcher noticed: live, nothing loaded
        restarted.load_delay_s["a"] = 0.1
        for _ in range(6):  # any request sent there finds the model gone and is retried elsewhere
            await pool.score("a", ["q"], ["d"])
        await until(lambda: restarted.ready() == {"a"})
        assert restarted.events.count(("load", "a")) == 2  # the first load, and the watcher's after the restart
        await until(lambda: "a" in next(r for r in pool.describe() if r["address"] == "t2:8101")["ready"])
        before = restarted.scored
        for _ in range(6):
            await pool.score("a", ["q"], ["d"])
        assert restarted.scored > before  # back in the rotation
    finally:
        await pool.close()


async def test_a_replica_that_joins_gets_the_wanted_models_first():
    tritons = three("a", "b")
    pool = pool_of({k: v for k, v in list(tritons.items())[:2]})
    pool.connect = lambda address: tritons[address]
    await pool.start()
    try:
        await pool.load("a")
        joiner = tritons["t2:8101"]
        joiner.load_delay_s["a"] = 0.2
        pool.targets = discovery.Targets(fixed=tuple(tritons))  # as a DNS answer with a new address
        await until(lambda: joiner.loading_now == 1)
        for _ in range(10):
            await pool.score("a", ["q"], ["d"])
        assert joiner.scored == 0, "no request before its model is loaded"
        await until(lambda: joiner.ready() == {"a"})  # only the wanted model: b was never loaded
        await until(lambda: "a" in next(r for r in pool.describe() if r["address"] == "t2:8101")["ready"])
        for _ in range(10):
            await pool.score("a", ["q"], ["d"])
        assert joiner.scored > 0
    finally:
        await pool.close()


async def test_a_pool_that_does_not_manage_models_never_loads_but_routes_once_they_are_ready():
    tritons = three("a")
    manager_pool, watcher_pool = pool_of(tritons), pool_of(tritons, manages_models=False)
    await manager_pool.start()
    await watcher_pool.start()
    try:
        await manager_pool.load("a")
        await until(lambda: all("a" in r["ready"] for r in watcher_pool.describe()))
        tritons["t0:8101"].crash()
        tritons["t0:8101"].restart()
        await until(lambda: tritons["t0:8101"].ready() == {"a"})  # reloaded by the managing pool alone
        assert tritons["t0:8101"].events.count(("load", "a")) == 2
        assert await watcher_pool.score("a", ["q"], ["d"])
    finally:
        await manager_pool.close()
        await watcher_pool.close()


async def test_loads_and_unloads_reach_every_replica_and_a_failed_load_is_undone():
    tritons = three("a", "bad")
    tritons["t1:8101"].failing_loads.add("bad")
    pool = pool_of(tritons)
    await pool.start()
    try:
        await pool.load("a")
        assert [t.ready() for t in tritons.values()] == [{"a"}] * 3
        assert await pool.load("a") is False  # READY everywhere: nothing loads again
        with pytest.raises(GatewayError) as failed:
            await pool.load("bad")
        assert failed.value.kind is ErrorKind.MODEL_LOAD_FAILED and "t1:8101" in failed.value.message
        assert [t.ready() for t in tritons.values()] == [{"a"}] * 3 and pool.wanted == {"a"}
        await pool.unload("a")
        assert [t.ready() for t in tritons.values()] == [set()] * 3 and pool.wanted == set()
    finally:
        await pool.close()


async def test_with_every_replica_down_a_request_fails_at_once():
    tritons = three("a")
    pool = pool_of(tritons)
    await pool.start()
    try:
        await pool.load("a")
        for t in tritons.values():
            t.crash()
        with pytest.raises(GatewayError) as failed:
            await pool.score("a", ["q"], ["d"])
        assert failed.value.kind is ErrorKind.BACKEND_UNAVAILABLE
        assert not await pool.is_live()
        with pytest.raises(GatewayError) as none_live:
            await pool.score("a", ["q"], ["d"])
        assert none_live.value.kind is ErrorKind.BACKEND_UNAVAILABLE and "no Triton replica" in none_live.value.message
    finally:
        await pool.close()


async def test_a_failure_that_is_the_requests_own_is_not_retried():
    tritons = three("a")
    pool = pool_of(tritons)
    await pool.start()
    try:
        await pool.load("a")
        for t in tritons.values():
            t.score_error = GatewayError(ErrorKind.OVERLOADED, "Exceeds maximum queue size")
        with pytest.raises(GatewayError) as failed:
            await pool.score("a", ["q"], ["d"])
        assert failed.value.kind is ErrorKind.OVERLOADED
        assert sum(t.events.count(("score", "a")) for t in tritons.values()) == 1
    finally:
        await pool.close()
