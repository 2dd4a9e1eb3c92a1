"""The gateway's use cases, between the HTTP routes and Triton: reranking and
pair scoring on a leased model (fanned out in chunks Triton can batch),
switching models, and reporting health."""

from __future__ import annotations

import asyncio
import uuid
from typing import Sequence

import numpy as np

from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import RequestRecord
from gateway.model_manager import ModelManager
from gateway.priority import RowBudget, is_bulk, triton_priority_level
from gateway.protocol import (
    HealthResponse,
    ModelsResponse,
    RerankMeta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankResultDocument,
    RerankUsage,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
    SwitchModelResponse,
)
from gateway.settings import GatewaySettings
from gateway.triton import InferenceBackend, ScoreOutputs
from rerank_engine.model_config import ModelConfig


class RerankService:
    def __init__(self, triton: InferenceBackend, models: ModelManager, settings: GatewaySettings) -> None:
        self.triton = triton
        self.models = models
        self.max_documents = settings.max_documents_per_request
        self.bulk_rows = settings.bulk_rows_in_flight
        self._bulk_budgets: dict[str, RowBudget] = {}  # per model

    async def score_pair(self, query: str, document: str, record: RequestRecord, priority: int = 0) -> float:
        async with self.models.lease() as model:
            outputs = await self._score(model, [query], [document], record=record, priority=priority)
        return float(outputs.score[0])

    async def rerank(self, body: RerankRequest, record: RequestRecord, priority: int = 0) -> RerankResponse:
        texts = body.texts()
        self._check_count(len(texts), "documents")
        warnings = []
        async with self.models.lease(body.model) as model:
            instruction = body.instruction if model.takes_instructions else None
            if body.instruction is not None and instruction is None:
                warnings.append(f"instruction ignored: {model.name} is not a Qwen3 reranker")
            outputs = await self._score(
                model, [body.query] * len(texts), texts, instruction, body.max_tokens_per_doc, record, priority
            )
        if not body.truncate:
            _refuse_truncated(outputs, model, "documents")
        order = sorted(range(len(texts)), key=lambda i: (-outputs.score[i], i))[: body.top_n]
        raw = body.return_raw_scores or body.raw_scores
        truncated = int(outputs.truncated.sum())
        return RerankResponse(
            id=uuid.uuid4().hex,
            model=model.name,
            results=[
                RerankResult(
                    index=i,
                    relevance_score=float(outputs.score[i]),
                    document=RerankResultDocument(text=texts[i]) if body.return_documents else None,
                    raw_score=float(outputs.raw_score[i]) if raw else None,
                )
                for i in order
            ],
            usage=RerankUsage(total_tokens=int(outputs.num_tokens.sum()), truncated_documents=truncated),
            meta=RerankMeta(truncated_documents=truncated, warnings=warnings),
        )

    async def score(self, body: ScoreRequest, record: RequestRecord, priority: int = 0) -> ScoreResponse:
        self._check_count(len(body.documents), "documents")
        async with self.models.lease(body.model) as model:
            outputs = await self._score(model, body.queries, body.documents, record=record, priority=priority)
        if not body.truncate:
            _refuse_truncated(outputs, model, "text_2")
        tokens = int(outputs.num_tokens.sum())
        return ScoreResponse(
            id=uuid.uuid4().hex,
            model=model.name,
            data=[ScoreData(index=i, score=float(s)) for i, s in enumerate(outputs.score)],
            usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens),
        )

    def _check_count(self, count: int, field: str) -> None:
        if count > self.max_documents:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"{field}: {count} items, over the limit of {self.max_documents} per request "
                "(RERANKER_MAX_DOCUMENTS_PER_REQUEST)",
                field=field,
            )

    async def _score(
        self,
        model: ModelConfig,
        queries: Sequence[str],
        documents: Sequence[str],
        instruction: str | None = None,
        max_document_tokens: int | None = None,
        record: RequestRecord | None = None,
        priority: int = 0,
    ) -> ScoreOutputs:
        if record is not None:
            record.model = model.name  # set first: a request that fails is still counted under its model
        # Chunks of at most max_batch_size go out concurrently, so Triton's
        # dynamic batcher can merge them with other clients' work.
        size = max(model.max_batch_size, 1)
        level = triton_priority_level(model, priority)
        budget = self._bulk_budget(model) if is_bulk(priority) else None
        if budget is not None:  # two chunks fit the budget: one computing while the next waits in Triton's queue
            size = min(size, max(budget.limit // 2, 1))

        async def chunk(start: int) -> ScoreOutputs:
            rows = (queries[start : start + size], documents[start : start + size])
            if budget is None:
                return await self.triton.score(model.name, *rows, instruction, max_document_tokens, level)
            async with budget.take(len(rows[1])):
                return await self.triton.score(model.name, *rows, instruction, max_document_tokens, level)

        chunks = await asyncio.gather(*(chunk(i) for i in range(0, len(documents), size)))
        outputs = ScoreOutputs.concatenate(chunks)
        _require_finite(outputs, model)
        if record is not None:
            record.record_scores(outputs)
        return outputs

    def _bulk_budget(self, model: ModelConfig) -> RowBudget | None:
        if self.bulk_rows is None:
            return None
        budget = self._bulk_budgets.get(model.name)
        if budget is None:
            budget = self._bulk_budgets[model.name] = RowBudget(self.bulk_rows)
        return budget

    async def switch_model(self, requested: str, keep_loaded: bool = False) -> SwitchModelResponse:
        result = await self.models.switch(requested, keep_loaded)
        return SwitchModelResponse(
            message=f"Switched to model {requested}",
            model=result.model,
            previous=result.previous,
            load_time_s=round(result.load_time_s, 3),
        )

    async def list_models(self) -> ModelsResponse:
        view = await self.models.view()
        return ModelsResponse(available=view.available, aliases=view.aliases, loaded=view.loaded, active=view.active)

    async def health(self) -> HealthResponse:
        live = await self.triton.is_live()
        active = self.models.active
        ready = live and active is not None and await self.triton.is_ready(active)
        status = "ok" if ready else ("degraded" if live else "unavailable")
        return HealthResponse(status=status, triton_live=live, active_model=active)


def _require_finite(outputs: ScoreOutputs, model: ModelConfig) -> None:
    """A NaN or infinite score is the model's failure: a clear error, never a NaN sorted into the results
    or a JSON encoder's crash (TEI refuses them the same way)."""
    bad = ~np.isfinite(outputs.score)
    if bad.any():
        index = int(bad.argmax())
        raise GatewayError(
            ErrorKind.INVALID_MODEL_OUTPUT,
            f"{model.name} returned a non-finite score ({outputs.score[index]}) for pair {index} "
            f"({int(bad.sum())} of {len(bad)}); the weights or the precision of the model are broken",
        )


def _refuse_truncated(outputs: ScoreOutputs, model: ModelConfig, field: str) -> None:
    """`truncate: false`: a pair over the model's limit is an error naming it and its length."""
    if outputs.truncated.any():
        index = int(outputs.truncated.argmax())
        raise GatewayError(
            ErrorKind.INPUT_TOO_LONG,
            f"{field}[{index}] with the query is {int(outputs.input_tokens[index])} tokens, over the "
            f"{model.max_length}-token limit of {model.name}; shorten it or send truncate: true",
            field=f"{field}[{index}]",
        )
