"""The gateway's only door to Triton: inference and the repository API over
gRPC, with Triton's failures translated into `GatewayError`s."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tritonclient.grpc import InferenceServerException, InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient

from gateway.errors import ErrorKind, GatewayError
from rerank_engine import contract

_OUTPUTS = (
    contract.OUTPUT_SCORE,
    contract.OUTPUT_RAW_SCORE,
    contract.OUTPUT_NUM_TOKENS,
    contract.OUTPUT_INPUT_TOKENS,
    contract.OUTPUT_TRUNCATED,
    contract.OUTPUT_COMPUTE_US,
)

# gRPC status -> what it means for the caller.
_GRPC_KINDS = {
    "StatusCode.INVALID_ARGUMENT": ErrorKind.INVALID_REQUEST,
    "StatusCode.UNAVAILABLE": ErrorKind.BACKEND_UNAVAILABLE,
    "StatusCode.DEADLINE_EXCEEDED": ErrorKind.BACKEND_TIMEOUT,
    "StatusCode.RESOURCE_EXHAUSTED": ErrorKind.OVERLOADED,
    "StatusCode.CANCELLED": ErrorKind.BACKEND_UNAVAILABLE,
}


@dataclass(frozen=True)
class ModelState:
    name: str
    state: str  # READY, UNAVAILABLE, LOADING, UNLOADING, or "" when never loaded


@dataclass(frozen=True)
class ModelInfo:
    """What the gateway needs to know of a loaded model, read from its config."""

    name: str
    max_batch_size: int
    scorer: str
    max_length: int

    @property
    def takes_instructions(self) -> bool:
        return self.scorer == contract.SCORER_QWEN3


@dataclass(frozen=True)
class ScoreOutputs:
    score: np.ndarray
    raw_score: np.ndarray
    num_tokens: np.ndarray
    input_tokens: np.ndarray
    truncated: np.ndarray
    compute_s: float  # engine time of the batch this request rode in
    round_trip_s: float  # gateway -> Triton -> gateway

    @classmethod
    def concatenate(cls, parts: Sequence["ScoreOutputs"]) -> "ScoreOutputs":
        """Chunks scored concurrently, back in request order; times of the slowest chunk."""
        arrays = [np.concatenate([getattr(p, f) for p in parts]) for f in _ARRAY_FIELDS]
        return cls(*arrays, max(p.compute_s for p in parts), max(p.round_trip_s for p in parts))


_ARRAY_FIELDS = ("score", "raw_score", "num_tokens", "input_tokens", "truncated")


def _translate(exc: InferenceServerException, doing: str) -> GatewayError:
    status = exc.status() or ""
    # The python backend appends the model's Python traceback ("At: ..."); callers need the first part.
    message = (exc.message() or str(exc)).split("\n\nAt:")[0].strip()
    if "Exceeds maximum queue size" in message:
        return GatewayError(ErrorKind.OVERLOADED, f"{doing}: Triton's queue is full, retry shortly ({message})")
    if "timeout expired" in message.lower():  # Triton's queue dropped it at the request's deadline
        return GatewayError(ErrorKind.BACKEND_TIMEOUT, f"{doing}: {message}")
    if "Request for unknown model" in message or "is not ready" in message or "not found" in message:
        return GatewayError(ErrorKind.MODEL_NOT_READY, f"{doing}: {message}")
    return GatewayError(_GRPC_KINDS.get(status, ErrorKind.BACKEND_ERROR), f"{doing}: {message}")


class TritonBackend:
    def __init__(self, url: str, request_timeout_s: float, load_timeout_s: float) -> None:
        self.url = url
        self.request_timeout_s = request_timeout_s
        self.load_timeout_s = load_timeout_s
        self._client = InferenceServerClient(url)

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

    async def load(self, model: str) -> None:
        try:
            await self._client.load_model(model, client_timeout=self.load_timeout_s)
        except InferenceServerException as exc:
            error = _translate(exc, f"loading model {model}")
            if error.kind is not ErrorKind.BACKEND_UNAVAILABLE:
                error.kind = ErrorKind.MODEL_LOAD_FAILED
            raise error from None

    async def unload(self, model: str) -> None:
        try:
            await self._client.unload_model(model, client_timeout=60.0)
        except InferenceServerException as exc:
            raise _translate(exc, f"unloading model {model}") from None

    async def model_info(self, model: str) -> ModelInfo:
        try:
            config = (await self._client.get_model_config(model, as_json=True, client_timeout=10.0))["config"]
        except InferenceServerException as exc:
            raise _translate(exc, f"reading the config of {model}") from None
        params = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        return ModelInfo(
            name=model,
            max_batch_size=int(config.get("max_batch_size") or 1),
            scorer=params.get(contract.PARAM_SCORER, ""),
            max_length=int(params.get(contract.PARAM_MAX_LENGTH) or 0),
        )

    async def score(
        self,
        model: str,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None = None,
        max_document_tokens: int | None = None,
    ) -> ScoreOutputs:
        """Score rows of (query, document) in one Triton request.

        Triton checks that every input has the same batch size, so a shared
        query (and instruction) is repeated per row; the engine tokenizes it once.
        """
        inputs = [_strings(contract.INPUT_QUERY, queries), _strings(contract.INPUT_DOCUMENT, documents)]
        if instruction is not None:
            inputs.append(_strings(contract.INPUT_INSTRUCTION, [instruction] * len(documents)))
        # The send time lets the model's batch log tell how long the request waited.
        parameters = {contract.REQUEST_PARAM_SENT_AT_NS: time.time_ns()}
        if max_document_tokens:
            parameters[contract.REQUEST_PARAM_MAX_DOCUMENT_TOKENS] = max_document_tokens
        started = time.perf_counter()
        try:
            result = await self._client.infer(
                model,
                inputs,
                outputs=[InferRequestedOutput(name) for name in _OUTPUTS],
                # The same deadline twice: the client stops waiting, and Triton drops the request
                # if it is still queued then, instead of computing a result nobody reads.
                client_timeout=self.request_timeout_s,
                timeout=int(self.request_timeout_s * 1e6),
                parameters=parameters,
            )
        except InferenceServerException as exc:
            error = _translate(exc, f"scoring with {model}")
            if error.kind is ErrorKind.BACKEND_TIMEOUT:
                error.message = (f"scoring with {model} did not finish within the {self.request_timeout_s:g} s "
                                 "limit (RERANKER_REQUEST_TIMEOUT_S); the request was dropped")
            raise error from None
        round_trip = time.perf_counter() - started
        *arrays, compute_us = (result.as_numpy(name).reshape(-1) for name in _OUTPUTS)
        return ScoreOutputs(*arrays, compute_s=float(compute_us[0]) / 1e6, round_trip_s=round_trip)


def _strings(name: str, values: Sequence[str]) -> InferInput:
    array = np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(-1, 1)
    tensor = InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor
