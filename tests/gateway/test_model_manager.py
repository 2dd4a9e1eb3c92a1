"""The model manager's logic against an in-memory Triton (tests/gateway/fake_backend.py):
leases across switches, drain timeouts, failed loads, restore after an outage,
keep_loaded and concurrent switches. Milliseconds each; the same behaviours are
checked against a real tritonserver in tests/app and tests/integration."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import GatewayMetrics
from gateway.serving.model_manager import ModelManager
from gateway.settings import GatewaySettings
from tests.gateway.fake_backend import FakeTriton

pytestmark = pytest.mark.anyio


def manager(triton: FakeTriton, **settings) -> ModelManager:
    fields = {"triton_url": "fake:1", "default_model": "a", "drain_timeout_s": 5.0, "triton_startup_timeout_s": 1.0,
              "model_aliases": {"alpha": "a"}, **settings}
    return ModelManager(triton, GatewaySettings(**fields), GatewayMetrics())


async def started(triton: FakeTriton, **settings) -> ModelManager:
    models = manager(triton, **settings)
    await models.start()
    assert models.active == "a" and triton.ready() == {"a"}
    return models


async def test_a_lease_held_across_a_switch_keeps_its_model_until_released():
    triton = FakeTriton("a", "b")
    models = await started(triton)
    release = asyncio.Event()

    async def request():
        async with models.lease() as model:
            await release.wait()
            return model.name

    held = asyncio.create_task(request())
    await asyncio.sleep(0)
    switch = asyncio.create_task(models.switch("b"))
    while models.active != "b":
        await asyncio.sleep(0.001)
    # New requests go to b at once; a stays loaded for the request that holds it.
    async with models.lease() as model:
        assert model.name == "b"
    await asyncio.sleep(0.02)
    assert not switch.done() and "a" in triton.ready() and ("unload", "a") not in triton.events
    release.set()
    assert await held == "a"
    result = await switch
    assert (result.model, result.previous) == ("b", "a")
    assert triton.ready() == {"b"} and triton.events[-1] == ("unload", "a")


async def test_a_drain_that_times_out_unloads_anyway():
    triton = FakeTriton("a", "b")
    models = await started(triton, drain_timeout_s=0.05)
    stuck = asyncio.Event()

    async def request():
        async with models.lease():
            await stuck.wait()

    held = asyncio.create_task(request())
    await asyncio.sleep(0)
    started_at = asyncio.get_running_loop().time()
    await models.switch("b")
    assert 0.04 < asyncio.get_running_loop().time() - started_at < 1.0
    assert triton.ready() == {"b"} and models.leases.held("a") == 1
    stuck.set()
    await held
    assert models.leases.held("a") == 0


async def test_a_failed_load_keeps_the_old_model_active():
    triton = FakeTriton("a", "broken")
    triton.failing_loads.add("broken")
    models = await started(triton)
    with pytest.raises(GatewayError) as refused:
        await models.switch("broken")
    assert refused.value.kind is ErrorKind.MODEL_LOAD_FAILED and "weights folder missing" in refused.value.message
    assert models.active == "a" and triton.ready() == {"a"} and ("unload", "a") not in triton.events
    async with models.lease() as model:
        assert model.name == "a"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for metric in models.metrics.switches.collect() for s in metric.samples}
    assert samples[("reranker_model_switches_total", (("model", "broken"), ("outcome", "failed")))] == 1


async def test_after_an_outage_the_models_are_loaded_again():
    triton = FakeTriton("a", "b")
    models = await started(triton)
    await models.switch("b", keep_loaded=True)
    watcher = asyncio.create_task(models.watch(0.005))
    try:
        triton.crash()
        await asyncio.sleep(0.03)
        assert triton.ready() == set()
        triton.restart()
        for _ in range(200):
            if triton.ready() == {"a", "b"}:
                break
            await asyncio.sleep(0.005)
        assert triton.ready() == {"a", "b"} and models.active == "b"
    finally:
        watcher.cancel()


async def test_keep_loaded_leaves_the_previous_model_for_requests_that_name_it():
    triton = FakeTriton("a", "b")
    models = await started(triton)
    await models.switch("b", keep_loaded=True)
    assert triton.ready() == {"a", "b"} and models.active == "b"
    async with models.lease("alpha") as model:  # by alias
        assert model.name == "a"
    view = await models.view()
    assert (view.loaded, view.active, view.precision) == (["a", "b"], "b", {"a": "auto", "b": "auto"})
    await models.switch("a")  # back, without keeping b
    assert triton.ready() == {"a"}


async def test_two_switches_at_once_are_serialised():
    triton = FakeTriton("a", "b", "c")
    triton.load_delay_s.update(b=0.03, c=0.03)
    models = await started(triton)
    results = await asyncio.gather(models.switch("b"), models.switch("c"))
    assert triton.most_loading_at_once == 1, "the two loads never overlap"
    assert [r.previous for r in results] == ["a", "b"] and models.active == "c"
    assert triton.ready() == {"c"}
    assert [e for e in triton.events if e[0] == "unload"] == [("unload", "a"), ("unload", "b")]


async def test_a_request_naming_a_model_that_is_not_loaded_is_refused():
    triton = FakeTriton("a", "b")
    models = await started(triton)
    with pytest.raises(GatewayError) as refused:
        async with models.lease("b"):
            pass
    assert refused.value.kind is ErrorKind.MODEL_NOT_LOADED and "loaded models: a" in refused.value.message
    with pytest.raises(GatewayError) as unknown:
        async with models.lease("zzz"):
            pass
    assert unknown.value.kind is ErrorKind.UNKNOWN_MODEL and "alpha" in unknown.value.message


async def test_no_triton_at_start_leaves_no_active_model_until_it_comes():
    triton = FakeTriton("a")
    triton.live = False
    models = manager(triton, triton_startup_timeout_s=0.0)
    await models.start()
    assert models.active is None
    with pytest.raises(GatewayError) as refused:
        async with models.lease():
            pass
    assert refused.value.kind is ErrorKind.NO_ACTIVE_MODEL
    watcher = asyncio.create_task(models.watch(0.005))
    try:
        triton.restart()
        for _ in range(200):
            if models.active == "a":
                break
            await asyncio.sleep(0.005)
        assert models.active == "a" and triton.ready() == {"a"}
    finally:
        watcher.cancel()
