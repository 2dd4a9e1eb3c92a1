"""The gateway's only door to Triton: inference and the repository API over
gRPC, with Triton's failures translated into `GatewayError`s."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
from tritonclient.grpc import (MAX_GRPC_MESSAGE_SIZE, InferenceServerException, InferInput, InferRequestedOutput,
                               KeepAliveOptions)
from tritonclient.grpc.aio import InferenceServerClient

from gateway.errors import ErrorKind, GatewayError
from rerank_engine import contract
from rerank_engine.model_config import ModelConfig

STATUS_KINDS = {
    "StatusCode.INVALID_ARGUMENT": ErrorKind.INVALID_REQUEST,
    "StatusCode.NOT_FOUND": ErrorKind.MODEL_NOT_READY,  # a model Triton does not know, or has not loaded
    "StatusCode.UNAVAILABLE": ErrorKind.BACKEND_UNAVAILABLE,
    "StatusCode.DEADLINE_EXCEEDED": ErrorKind.BACKEND_TIMEOUT,
    "StatusCode.RESOURCE_EXHAUSTED": ErrorKind.OVERLOADED,
    "StatusCode.CANCELLED": ErrorKind.BACKEND_UNAVAILABLE,
}
"""Triton's failures by gRPC status code: the first and main classification."""

UNAVAILABLE_MESSAGES = (
    ("Exceeds maximum queue size", ErrorKind.OVERLOADED),  # the model's max_queue_size is reached
    ("timeout expired", ErrorKind.BACKEND_TIMEOUT),  # dropped from the queue at the request's deadline
    ("is not ready", ErrorKind.MODEL_NOT_READY),  # loading or unloading
)
"""The fallback: Triton answers these conditions with the same UNAVAILABLE code as a server that is
down, and only its message tells them apart. Read from tritonserver 2.51 (NGC 24.10, the nvidia-pytriton
0.7.0 wheel); matched case-insensitively, on UNAVAILABLE only."""


RECONNECT_BACKOFF_MS = 2000
"""gRPC waits longer and longer before reconnecting to a server that went away (up to 120 s by default);
a Triton replica that restarts should be seen within seconds of being back."""


def _channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options (it takes all or none), with the reconnect backoff capped."""
    keepalive = KeepAliveOptions()
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS),
    ]


@dataclass(frozen=True)
class ModelState:
    name: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING, or "" when never loaded


@dataclass(frozen=True)
class PairOptions:
    """How one request's pairs are cut and chunked: sent as Triton request parameters, and read by the
    engine into each pair (`rerank_engine.inputs.pair_options`)."""

    max_document_tokens: int | None = None  # Cohere v2's max_tokens_per_doc
    max_tokens: int | None = None  # vLLM's truncate_prompt_tokens: the most tokens of each sequence
    max_chunks: int = 1  # Cohere v1's max_chunks_per_doc: windows per long document
    keep_end: bool = False  # cut the start, not the end (TEI's truncation_direction, vLLM's truncation_side)

    def parameters(self) -> dict:
        """The Triton request parameters that say this; defaults are left out."""
        parameters = {
            contract.REQUEST_PARAM_MAX_DOCUMENT_TOKENS: self.max_document_tokens,
            contract.REQUEST_PARAM_MAX_TOKENS: self.max_tokens,
            contract.REQUEST_PARAM_MAX_CHUNKS: self.max_chunks if self.max_chunks > 1 else None,
            contract.REQUEST_PARAM_KEEP_END: self.keep_end or None,
        }
        return {key: value for key, value in parameters.items() if value is not None}


@dataclass(frozen=True)
class ScoreOutputs:
    score: np.ndarray
    raw_score: np.ndarray
    num_tokens: np.ndarray
    input_tokens: np.ndarray
    truncated: np.ndarray
    chunks: np.ndarray  # windows scored per document (1 unless chunking was asked for)
    compute_s: float  # engine time of the batch this request rode in
    round_trip_s: float  # gateway -> Triton -> gateway
    # What computed these rows (contract.OUTPUT_FINGERPRINT); None when unknown: such rows are never cached.
    fingerprint: str | None = None

    def rows(self, start: int, end: int) -> "ScoreOutputs":
        """Rows start..end, as if they had been a request of their own (a coalesced caller's share)."""
        arrays = [getattr(self, f)[start:end] for f in contract.SCORE_OUTPUTS]
        return ScoreOutputs(*arrays, self.compute_s, self.round_trip_s, self.fingerprint)

    @classmethod
    def concatenate(cls, parts: Sequence["ScoreOutputs"]) -> "ScoreOutputs":
        """Chunks scored concurrently, back in request order; times of the slowest chunk; the fingerprint
        they all carry, else None."""
        arrays = [np.concatenate([getattr(p, f) for p in parts]) for f in contract.SCORE_OUTPUTS]
        fingerprints = {p.fingerprint for p in parts}
        return cls(*arrays, max(p.compute_s for p in parts), max(p.round_trip_s for p in parts),
                   fingerprints.pop() if len(fingerprints) == 1 else None)


def classify(status: str, message: str) -> ErrorKind:
    """The status code decides; on UNAVAILABLE the message may refine it."""
    kind = STATUS_KINDS.get(status, ErrorKind.BACKEND_ERROR)
    if status == "StatusCode.UNAVAILABLE":
        lowered = message.lower()
        kind = next((k for text, k in UNAVAILABLE_MESSAGES if text.lower() in lowered), kind)
    return kind


def _translate(exc: InferenceServerException, doing: str) -> GatewayError:
    # The python backend appends the model's Python traceback ("At: ..."); callers need the first part.
    message = (exc.message() or str(exc)).split("\n\nAt:")[0].strip()
    return GatewayError(classify(exc.status() or "", message), f"{doing}: {message}")


class InferenceBackend(Protocol):
    """What the model manager and the service need of Triton: `TritonBackend` is the real one; the unit
    tests drive the model manager with an in-memory fake."""

    async def is_live(self) -> bool: ...

    async def repository(self) -> list[ModelState]: ...

    async def is_ready(self, model: str) -> bool: ...

    async def load(self, model: str) -> bool:
        """Make sure `model` is loaded (on every replica); True if anything had to be loaded."""
        ...

    async def unload(self, model: str) -> None: ...

    async def model_config(self, model: str) -> ModelConfig: ...

    async def score(self, model: str, queries: Sequence[str], documents: Sequence[str],
                    instruction: str | None = None, options: PairOptions = PairOptions(),
                    timeout_s: float | None = None, priority_level: int = 0) -> ScoreOutputs: ...

    async def close(self) -> None: ...


class TritonBackend:
    def __init__(self, url: str, request_timeout_s: float, load_timeout_s: float) -> None:
        self.url = url
        self.request_timeout_s = request_timeout_s
        self.load_timeout_s = load_timeout_s
        self._client = InferenceServerClient(url, channel_args=_channel_args())

    async def close(self) -> None:
        await self._client.close()

    async def is_live(self) -> bool:
        try:
            return await self._client.is_server_live(client_timeout=2.0)
        except InferenceServerException:
            return False

    async def repository(self) -> list[ModelState]:
        try:
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=10.0)
        except InferenceServerException as exc:
            raise _translate(exc, "reading Triton's model repository") from None
        return [ModelState(m["name"], m.get("state", "")) for m in index.get("models", [])]

    async def is_ready(self, model: str) -> bool:
        try:
            return await self._client.is_model_ready(model, client_timeout=5.0)
        except InferenceServerException:
            return False

    async def load(self, model: str) -> bool:
        # Triton loads a model that is already loaded again from scratch (29 s for the tiny test bge
        # on a busy 2-core CPU, as long as the first load), so a READY model is left alone.
        if await self.is_ready(model):
            return False
        try:
            await self._client.load_model(model, client_timeout=self.load_timeout_s)
        except InferenceServerException as exc:
            error = _translate(exc, f"loading model {model}")
            if error.kind is not ErrorKind.BACKEND_UNAVAILABLE:
                error.kind = ErrorKind.MODEL_LOAD_FAILED
            raise error from None
        return True

    async def unload(self, model: str) -> None:
        try:
            await self._client.unload_model(model, client_timeout=60.0)
        except InferenceServerException as exc:
            raise _translate(exc, f"unloading model {model}") from None

    async def model_config(self, model: str) -> ModelConfig:
        try:
            config = await self._client.get_model_config(model, as_json=True, client_timeout=10.0)
        except InferenceServerException as exc:
            raise _translate(exc, f"reading the config of {model}") from None
        return ModelConfig.from_dict(config["config"])

    async def score(
        self,
        model: str,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None = None,
        options: PairOptions = PairOptions(),
        timeout_s: float | None = None,
        priority_level: int = 0,
    ) -> ScoreOutputs:
        """Score rows of (query, document) in one Triton request.

        Triton checks that every input has the same batch size, so a shared
        query (and instruction) is repeated per row; the engine tokenizes it once.
        `timeout_s`: what is left of the request's deadline (a retry on another
        replica gets less than the first try); default the whole `request_timeout_s`.
        `priority_level` is the dynamic batcher's (1 most urgent; 0: the model's default level).
        """
        timeout_s = self.request_timeout_s if timeout_s is None else timeout_s
        inputs = [_strings(contract.INPUT_QUERY, queries), _strings(contract.INPUT_DOCUMENT, documents)]
        if instruction is not None:
            inputs.append(_strings(contract.INPUT_INSTRUCTION, [instruction] * len(documents)))
        # The send time lets the model's batch log tell how long the request waited.
        parameters = {contract.REQUEST_PARAM_SENT_AT_NS: time.time_ns(), **options.parameters()}
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                model,
                inputs,
                outputs=[InferRequestedOutput(name) for name in contract.OUTPUTS],
                # The same deadline twice: the client stops waiting, and Triton drops the request
                # if it is still queued then, instead of computing a result nobody reads.
                client_timeout=timeout_s,
                timeout=max(int(timeout_s * 1e6), 1),
                parameters=parameters,
                priority=priority_level,
            )
        except InferenceServerException as exc:
            error = _translate(exc, f"scoring with {model}")
            if error.kind is ErrorKind.BACKEND_TIMEOUT:
                error.message = (f"scoring with {model} did not finish within the {self.request_timeout_s:g} s "
                                 "limit (RERANKER_REQUEST_TIMEOUT_S); the request was dropped")
            raise error from None
        round_trip = time.perf_counter() - started
        *arrays, compute_us, fingerprint = (result.as_numpy(name).reshape(-1) for name in contract.OUTPUTS)
        return ScoreOutputs(*arrays, compute_s=float(compute_us[0]) / 1e6, round_trip_s=round_trip,
                            fingerprint=fingerprint[0].decode())


def _strings(name: str, values: Sequence[str]) -> InferInput:
    array = np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(-1, 1)
    tensor = InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor
