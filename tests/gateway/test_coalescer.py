"""The coalescer against an in-memory backend whose score is a function of each row: concurrent small calls
share Triton requests, and every caller still gets exactly its own rows, deadline and errors."""

from __future__ import annotations

import asyncio
import zlib

import numpy as np
import pytest

from gateway.errors import ErrorKind, GatewayError
from gateway.serving.coalescer import Coalescer
from gateway.serving.triton import PairOptions, ScoreOutputs

pytestmark = pytest.mark.anyio

POISON = "<poison>"


def row_score(query: str, document: str) -> float:
    return zlib.crc32(f"{query}\0{document}".encode()) / 2**32


class RowBackend:
    """Scores each row by `row_score`; refuses a request holding POISON as Triton refuses bad input."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.release: asyncio.Event | None = None  # while set and not released, score() waits

    async def score(self, model, queries, documents, instruction=None, options=PairOptions(), timeout_s=None,
                    priority_level=0) -> ScoreOutputs:
        self.calls.append({"model": model, "rows": len(documents), "instruction": instruction, "options": options,
                           "level": priority_level, "timeout_s": timeout_s})
        if self.release is not None:
            await self.release.wait()
        await asyncio.sleep(0)
        if POISON in documents:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "scoring: a poisoned row")
        n = len(documents)
        score = np.array([row_score(q, d) for q, d in zip(queries, documents)], dtype=np.float32)
        return ScoreOutputs(score, score * 10, np.full(n, 7, np.int32), np.full(n, 9, np.int32),
                            np.zeros(n, bool), np.ones(n, np.int32), compute_s=0.001, round_trip_s=0.002,
                            fingerprint=f"{model}-weights")

    async def is_live(self) -> bool:
        return True


def coalescer(backend, small_rows=8, max_in_flight=1, window_s=0.05, limit=16, timeout_s=5.0):
    return Coalescer(backend, lambda model: limit, timeout_s, small_rows, max_in_flight, window_s)


def expected(query: str, documents: list[str]) -> list[float]:
    return [float(np.float32(row_score(query, d))) for d in documents]


async def test_concurrent_small_calls_share_one_request_and_each_gets_its_own_rows():
    backend = RowBackend()
    scorer = coalescer(backend)
    calls = [(f"q{i}", [f"d{i}-{j}" for j in range(i % 3 + 1)]) for i in range(6)]
    answers = await asyncio.gather(*(scorer.score("m", [q] * len(docs), docs) for q, docs in calls))
    # The first goes at once, alone (the in-flight bound is 1 here); the five behind it go together.
    assert [c["rows"] for c in backend.calls] == [1, sum(len(d) for _, d in calls[1:])]
    for (query, documents), outputs in zip(calls, answers):
        assert outputs.score.tolist() == expected(query, documents)
        assert outputs.raw_score.tolist() == pytest.approx([10 * s for s in expected(query, documents)])
        assert len(outputs.num_tokens) == len(documents) and outputs.fingerprint == "m-weights"


async def test_model_options_instruction_and_level_are_never_mixed():
    backend = RowBackend()
    scorer = coalescer(backend)
    await asyncio.gather(
        scorer.score("a", ["q"], ["d"]), scorer.score("b", ["q"], ["d"]),
        scorer.score("a", ["q"], ["d"], options=PairOptions(max_tokens=5)),
        scorer.score("a", ["q"], ["d"], instruction="judge"), scorer.score("a", ["q"], ["d"], priority_level=1),
        scorer.score("a", ["q"], ["e"]),
    )
    keys = sorted((c["model"], c["instruction"] or "", c["options"].max_tokens or 0, c["level"], c["rows"])
                  for c in backend.calls)
    # Each group's first call goes at once; only the plain "a" group had a second, sent after the first.
    assert keys == [("a", "", 0, 0, 1), ("a", "", 0, 0, 1), ("a", "", 0, 1, 1), ("a", "", 5, 0, 1),
                    ("a", "judge", 0, 0, 1), ("b", "", 0, 0, 1)]


async def test_a_large_call_goes_straight_through():
    backend = RowBackend()
    scorer = coalescer(backend, small_rows=4)
    documents = [f"d{j}" for j in range(5)]
    outputs, small = await asyncio.gather(scorer.score("m", ["q"] * 5, documents), scorer.score("m", ["q"], ["x"]))
    assert sorted(c["rows"] for c in backend.calls) == [1, 5]
    assert outputs.score.tolist() == expected("q", documents) and small.score.tolist() == expected("q", ["x"])


async def test_a_merged_request_stays_within_the_models_batch_limit():
    backend = RowBackend()
    scorer = coalescer(backend, small_rows=4, max_in_flight=100, limit=6)
    answers = await asyncio.gather(*(scorer.score("m", ["q"] * 4, [f"{i}-{j}" for j in range(4)]) for i in range(5)))
    assert [c["rows"] for c in backend.calls] == [4, 4, 4, 4, 4]  # 4 + 4 > 6: one call each
    assert all(a.score.tolist() == expected("q", [f"{i}-{j}" for j in range(4)]) for i, a in enumerate(answers))


async def test_calls_beyond_the_in_flight_bound_wait_for_one_to_return_then_go_together():
    backend = RowBackend()
    backend.release = asyncio.Event()
    scorer = coalescer(backend, max_in_flight=1, window_s=10.0)
    first = asyncio.ensure_future(scorer.score("m", ["q"], ["first"]))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(scorer.score("m", ["q"], [f"later-{i}"])) for i in range(5)]
    await asyncio.sleep(0.01)
    assert [c["rows"] for c in backend.calls] == [1]  # the bound holds the five back
    backend.release.set()
    await asyncio.gather(first, *later)
    assert [c["rows"] for c in backend.calls] == [1, 5]


async def test_waiting_calls_go_out_after_the_window_even_at_the_bound():
    backend = RowBackend()
    backend.release = asyncio.Event()
    scorer = coalescer(backend, max_in_flight=1, window_s=0.05)
    held = asyncio.ensure_future(scorer.score("m", ["q"], ["held"]))
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(scorer.score("m", ["q"], ["waiting"]))
    await asyncio.sleep(0.2)
    assert [c["rows"] for c in backend.calls] == [1, 1]  # sent by the window, the first still in flight
    backend.release.set()
    assert (await waiting).score.tolist() == expected("q", ["waiting"])
    await held


async def test_a_caller_that_gives_up_costs_the_others_nothing():
    backend = RowBackend()
    backend.release = asyncio.Event()
    scorer = coalescer(backend, max_in_flight=4)
    calls = [asyncio.ensure_future(scorer.score("m", ["q"], [f"d{i}"])) for i in range(4)]
    await asyncio.sleep(0.01)
    calls[1].cancel()  # a client that disconnected mid-request
    backend.release.set()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    for i in (0, 2, 3):
        assert done[i].score.tolist() == expected("q", [f"d{i}"])


async def test_a_caller_cancelled_before_sending_is_left_out():
    backend = RowBackend()
    backend.release = asyncio.Event()
    scorer = coalescer(backend, max_in_flight=1, window_s=10.0)
    first = asyncio.ensure_future(scorer.score("m", ["q"], ["first"]))
    await asyncio.sleep(0.01)
    gone, kept = (asyncio.ensure_future(scorer.score("m", ["q"], [d])) for d in ("gone", "kept"))
    await asyncio.sleep(0.01)
    gone.cancel()
    backend.release.set()
    await first
    assert (await kept).score.tolist() == expected("q", ["kept"])
    assert [c["rows"] for c in backend.calls] == [1, 1]


async def test_each_caller_keeps_its_own_deadline():
    backend = RowBackend()
    backend.release = asyncio.Event()
    scorer = coalescer(backend, max_in_flight=1, window_s=10.0)
    alone = asyncio.ensure_future(scorer.score("m", ["q"], ["alone"], timeout_s=3.0))
    await asyncio.sleep(0.01)
    assert backend.calls[0]["timeout_s"] == 3.0  # sent at once, alone: the backend holds it to its deadline
    short = asyncio.ensure_future(scorer.score("m", ["q"], ["short"], timeout_s=0.05))
    long = asyncio.ensure_future(scorer.score("m", ["q"], ["long"], timeout_s=5.0))
    with pytest.raises(GatewayError) as failed:
        await short  # it waited behind the bound past its own deadline
    assert failed.value.kind is ErrorKind.BACKEND_TIMEOUT
    backend.release.set()
    assert (await long).score.tolist() == expected("q", ["long"])
    await alone
    assert backend.calls[1]["rows"] == 1 and backend.calls[1]["timeout_s"] > 1.0  # the short one was left out


async def test_a_bad_call_next_to_good_ones_fails_alone():
    backend = RowBackend()
    backend.release = asyncio.Event()
    scorer = coalescer(backend)
    first = asyncio.ensure_future(scorer.score("m", ["q"], ["first"]))  # holds the group's one place at Triton
    await asyncio.sleep(0.01)
    backend.release.set()
    good = [scorer.score("m", ["q"], [f"good-{i}"]) for i in range(3)]
    bad = scorer.score("m", ["q"], [POISON])
    *answers, refused = await asyncio.gather(*good, bad, return_exceptions=True)
    assert isinstance(refused, GatewayError) and refused.kind is ErrorKind.INVALID_REQUEST
    assert [a.score.tolist() for a in answers] == [expected("q", [f"good-{i}"]) for i in range(3)]
    await first
    assert [c["rows"] for c in backend.calls] == [1, 4, 1, 1, 1, 1]  # merged, then each sent again on its own


async def test_a_backend_outage_fails_every_caller_with_its_error():
    backend = RowBackend()

    async def down(*args, **kwargs):
        raise GatewayError(ErrorKind.BACKEND_UNAVAILABLE, "Triton is unreachable")

    backend.score = down
    scorer = coalescer(backend)
    answers = await asyncio.gather(*(scorer.score("m", ["q"], [f"d{i}"]) for i in range(3)), return_exceptions=True)
    assert all(isinstance(a, GatewayError) and a.kind is ErrorKind.BACKEND_UNAVAILABLE for a in answers)


async def test_other_calls_reach_the_backend():
    scorer = coalescer(RowBackend())
    assert await scorer.is_live() is True
