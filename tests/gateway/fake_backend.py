"""An in-memory stand-in for Triton (`gateway.serving.triton.InferenceBackend`), for
the fast unit tests of the model manager, the replica pool and the cluster's
coordinator: models load, unload and score in memory, with delays, failures
and outages the test controls. The real-Triton tests (tests/app,
tests/integration) remain the truth; this only makes the logic testable in
milliseconds."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Sequence

import numpy as np

from gateway.errors import ErrorKind, GatewayError
from gateway.serving.triton import ModelState, PairOptions, ScoreOutputs
from rerank_engine.model_config import ModelConfig


def pair_score(model: str, fingerprint: str | None, instruction: str | None, options: PairOptions, query: str,
               document: str) -> float:
    """A score in [0, 1) that differs with every input: what a cache hit must reproduce exactly."""
    text = repr((model, fingerprint, instruction, options, query, document)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little") / 2**32


def model_config(name: str, max_batch_size: int = 8) -> ModelConfig:
    return ModelConfig(name=name, max_batch_size=max_batch_size, max_queue_delay_us=100, inputs=(),
                       parameters={"scorer": "cross_encoder", "max_length": "512"})


class FakeTriton:
    def __init__(self, *models: str) -> None:
        self.configs = {name: model_config(name) for name in models}
        self.states = {name: "" for name in models}
        self.live = True
        self.load_delay_s: dict[str, float] = {}
        self.failing_loads: set[str] = set()
        self.hold_scoring: asyncio.Event | None = None  # while set and not released, score() waits
        self.score_error: GatewayError | None = None  # score() fails with it (after being counted)
        self.events: list[tuple[str, str]] = []  # ("load" | "unload" | "score", model), in order
        self.priority_levels: list[int] = []  # the dynamic-batcher level of each score call, in order
        self.loading_now = 0
        self.most_loading_at_once = 0
        self.scored = 0  # requests answered
        self.rows: list[int] = []  # rows of each score call, in order
        # What each model's responses report as their fingerprint (a model missing here reports none, as a
        # Triton model without the output would); with by_pair, scores depend on the pair and the fingerprint.
        self.fingerprints: dict[str, str] = {}
        self.by_pair = False
        self._crashed = asyncio.Event()  # set while down: requests held in score() fail as a dead server's do

    # --- what a test does to it
    def crash(self) -> None:
        """Triton dies: nothing answers, and a restarted Triton has nothing loaded."""
        self.live = False
        self.states = {name: "" for name in self.states}
        self._crashed.set()

    def restart(self) -> None:
        self.live = True
        self._crashed = asyncio.Event()

    def ready(self) -> set[str]:
        return {name for name, state in self.states.items() if state == "READY"}

    # --- InferenceBackend
    def _require_live(self) -> None:
        if not self.live:
            raise GatewayError(ErrorKind.BACKEND_UNAVAILABLE, "Triton is unreachable")

    async def is_live(self) -> bool:
        return self.live

    async def repository(self) -> list[ModelState]:
        self._require_live()
        return [ModelState(name, state) for name, state in self.states.items()]

    async def is_ready(self, model: str) -> bool:
        return self.live and self.states.get(model) == "READY"

    async def load(self, model: str) -> bool:
        self._require_live()
        if self.states.get(model) == "READY":  # as TritonBackend.load: a READY model is left alone
            return False
        self.events.append(("load", model))
        self.loading_now += 1
        self.most_loading_at_once = max(self.most_loading_at_once, self.loading_now)
        try:
            await asyncio.sleep(self.load_delay_s.get(model, 0.0))
            if model in self.failing_loads:
                self.states[model] = "UNAVAILABLE"
                raise GatewayError(ErrorKind.MODEL_LOAD_FAILED, f"loading model {model}: weights folder missing")
            self.states[model] = "READY"
        finally:
            self.loading_now -= 1
        return True

    async def unload(self, model: str) -> None:
        self._require_live()
        self.events.append(("unload", model))
        self.states[model] = "UNAVAILABLE"

    async def model_config(self, model: str) -> ModelConfig:
        if not await self.is_ready(model):
            raise GatewayError(ErrorKind.MODEL_NOT_READY, f"model {model} is not ready")
        return self.configs[model]

    async def score(self, model: str, queries: Sequence[str], documents: Sequence[str],
                    instruction: str | None = None, options: PairOptions = PairOptions(),
                    timeout_s: float | None = None, priority_level: int = 0) -> ScoreOutputs:
        self._require_live()
        if self.states.get(model) != "READY":
            raise GatewayError(ErrorKind.MODEL_NOT_READY, f"Request for unknown model: '{model}' is not found")
        self.events.append(("score", model))
        if self.score_error is not None:
            raise self.score_error
        self.priority_levels.append(priority_level)
        if self.hold_scoring is not None:
            crashed = self._crashed
            held = asyncio.ensure_future(self.hold_scoring.wait())
            died = asyncio.ensure_future(crashed.wait())
            await asyncio.wait([held, died], return_when=asyncio.FIRST_COMPLETED)
            held.cancel()
            died.cancel()
            if crashed.is_set():  # died with the request in flight
                raise GatewayError(ErrorKind.BACKEND_UNAVAILABLE, "Socket closed")
        self.scored += 1
        self.rows.append(len(documents))
        n = len(documents)
        fingerprint = self.fingerprints.get(model)
        if self.by_pair:
            score = np.array([pair_score(model, fingerprint, instruction, options, q, d)
                              for q, d in zip(queries, documents)], np.float32)
            tokens = np.array([len(q) + len(d) for q, d in zip(queries, documents)], np.int32)
            truncated = tokens > 40
            return ScoreOutputs(score, score * 10, tokens, tokens + 1, truncated, 1 + tokens % 3, 0.0, 0.0,
                                fingerprint)
        # A score that says which model made it: the model's name length, per document.
        score = np.full(n, len(model) / 100, np.float32)
        ones = np.ones(n, np.int32)
        return ScoreOutputs(score, score, ones, ones, np.zeros(n, bool), ones, 0.0, 0.0, fingerprint)

    async def close(self) -> None:
        pass
