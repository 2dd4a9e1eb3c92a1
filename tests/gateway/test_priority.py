"""Request priority without a server: no shipped config has Triton priority
levels or queue policies, vLLM's priority maps onto the levels of a config
that has them, and the bulk row budget; the service sends the level, holds
bulk chunks to the budget and every chunk to the dispatch window, most urgent
first."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.metrics import RequestRecord
from gateway.serving.priority import RowBudget, triton_priority_level
from gateway.api.protocol import RerankRequest
from gateway.serving.service import RerankService
from rerank_engine.model_config import ModelConfig
from tests.gateway.fake_backend import FakeTriton
from tests.gateway.test_model_manager import started

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CONFIGS = sorted([*REPOSITORY.glob("*/config.pbtxt"), *REPOSITORY.glob("*/configs/*.pbtxt")])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPOSITORY)))
def test_no_shipped_config_has_priority_levels_or_a_queue_policy(path):
    # With either, Triton 2.51 builds no batch ahead and can leave an instance idle for 0.5 s with work queued:
    # priority lives in the gateway (the bulk budget, the dispatch window), deadlines in the gRPC cancellation.
    batching = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig()).dynamic_batching
    assert batching.priority_levels == 0 and batching.default_priority_level == 0
    assert not batching.HasField("default_queue_policy") and not batching.priority_queue_policy


LEVELLED = ModelConfig(name="a", max_batch_size=8, max_queue_delay_us=0, inputs=(),
                       parameters={"scorer": "cross_encoder"}, priority_levels=3, default_priority_level=2)
"""A model of a user's own config with Triton priority levels (none of the shipped ones has them)."""


@pytest.mark.parametrize(("priority", "level"), [(0, 0), (-1, 1), (-100, 1), (1, 3), (7, 3), (2**63 - 1, 3)])
def test_vllm_priority_to_a_configs_levels(priority, level):
    # vLLM: lower is served first, 0 normal; Triton: level 1 most urgent, 0 means the model's default (2 here).
    assert triton_priority_level(LEVELLED, priority) == level


def test_a_model_without_levels_takes_every_priority_at_its_one_level():
    model = ModelConfig(name="m", max_batch_size=8, max_queue_delay_us=0, inputs=())
    assert {triton_priority_level(model, p) for p in (-5, 0, 5)} == {0}


@pytest.mark.anyio
async def test_the_budget_holds_rows_beyond_its_limit_in_arrival_order():
    budget = RowBudget(8)
    order, release = [], asyncio.Event()

    async def hold(name: str, rows: int) -> None:
        async with budget.take(rows):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("a", 6))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold("big", 4)), asyncio.create_task(hold("small", 1))]
    await asyncio.sleep(0.01)
    assert order == ["a"] and budget.used == 6 and budget.waiting_rows == 5  # "small" fits but is not first
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["a", "big", "small"] and budget.used == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_gives_back_nothing_it_did_not_get():
    budget = RowBudget(4)
    release = asyncio.Event()

    async def hold(rows: int) -> None:
        async with budget.take(rows):
            await release.wait()

    first = asyncio.create_task(hold(4))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(hold(2))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    await asyncio.sleep(0)
    release.set()
    await first
    assert budget.used == 0 and budget.waiting_rows == 0
    async with budget.take(100):  # larger than the limit: taken as the whole budget, never a deadlock
        assert budget.used == 4


async def levelled_service(max_batch_size: int, **settings) -> tuple[FakeTriton, RerankService]:
    """A service on a fake Triton serving model "a" with three levels (2 the default)."""
    triton = FakeTriton("a")
    triton.configs["a"] = dataclasses.replace(LEVELLED, max_batch_size=max_batch_size)
    models = await started(triton)
    return triton, RerankService(triton, models, models.settings.model_copy(update=settings))


@pytest.mark.anyio
async def test_the_service_sends_the_level_and_holds_bulk_to_the_budget():
    triton, service = await levelled_service(max_batch_size=8, bulk_rows_in_flight=4)
    body = RerankRequest(query="q", documents=[f"d{i}" for i in range(8)])
    await service.rerank(body, RequestRecord(), priority=-1)
    assert triton.priority_levels == [1]  # 8 rows: one chunk of max_batch_size
    triton.priority_levels.clear()
    triton.hold_scoring = asyncio.Event()
    bulk = asyncio.create_task(service.rerank(body, RequestRecord(), priority=1))
    await asyncio.sleep(0.01)
    assert service._bulk_budgets["a"].used == 4 and triton.priority_levels == [3, 3]  # two 2-row chunks at Triton
    triton.hold_scoring.set()
    response = await bulk
    assert len(response.results) == 8 and triton.priority_levels == [3] * 4


@pytest.mark.anyio
async def test_waiters_are_served_most_urgent_first_then_in_arrival_order():
    budget = RowBudget(4)
    order, release = [], asyncio.Event()

    async def hold(name: str, rows: int, urgency: int) -> None:
        async with budget.take(rows, urgency):
            order.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(hold("first", 4, 2))
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold(name, 4, urgency))
               for name, urgency in (("bulk", 3), ("normal", 2), ("interactive", 1), ("normal-2", 2))]
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["first", "interactive", "normal", "normal-2", "bulk"]


@pytest.mark.anyio
async def test_the_dispatch_window_holds_every_priority_and_lets_the_urgent_in_first():
    triton, service = await levelled_service(max_batch_size=4, dispatch_window_rows=8)
    triton.hold_scoring = asyncio.Event()
    record = RequestRecord()
    normal = asyncio.create_task(service.rerank(RerankRequest(query="q", documents=[f"d{i}" for i in range(16)]),
                                                record))
    await asyncio.sleep(0.01)
    assert service._windows["a"].used == 8 and triton.priority_levels == [0, 0]  # 2 of 4 chunks at Triton
    urgent = asyncio.create_task(service.rerank(RerankRequest(query="q", documents=["x"]), RequestRecord(),
                                                priority=-1))
    await asyncio.sleep(0.01)
    assert triton.priority_levels == [0, 0]  # held too: the window counts every priority
    triton.hold_scoring.set()
    await asyncio.gather(normal, urgent)
    # The interactive chunk went in first once the window had room, before the normal request's last two.
    assert triton.priority_levels == [0, 0, 1, 0, 0]
    assert service._windows["a"].used == 0 and record.model == "a"
