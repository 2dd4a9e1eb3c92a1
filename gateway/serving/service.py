"""The gateway's use cases, between the HTTP routes and Triton: reranking and
pair scoring on a leased model (fanned out in chunks Triton can batch), in the
shapes of the clients people already run (Cohere, Jina, TEI, vLLM), switching
models, and reporting health."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import numpy as np

from gateway.errors import ErrorKind, GatewayError
from gateway.metrics import RequestRecord
from gateway.serving.cache import CachePolicy, ScoreCache
from gateway.serving.model_manager import ModelManager
from gateway.serving.priority import RowBudget, is_bulk, triton_priority_level
from gateway.api.protocol import (
    HealthResponse,
    ModelsResponse,
    OpenAIModel,
    OpenAIModelList,
    RerankDocument,
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
    ScoringOptions,
    SwitchModelResponse,
    TeiRank,
    TeiRerankRequest,
    clean_text,
)
from gateway.settings import GatewaySettings
from gateway.serving.triton import InferenceBackend, PairOptions, ScoreOutputs
from rerank_engine import catalog, contract
from rerank_engine.model_config import ModelConfig

if TYPE_CHECKING:
    from gateway.fleet.cluster import Cluster


class RerankService:
    def __init__(self, triton: InferenceBackend, models: ModelManager, settings: GatewaySettings,
                 cluster: Cluster | None = None, cache: ScoreCache | None = None) -> None:
        self.triton = triton
        self.cache = cache  # None: RERANKER_CACHE is off
        self.models = models
        self.settings = settings
        self.cluster = cluster  # None: this gateway switches alone
        self.max_documents = settings.max_documents_per_request
        self.bulk_rows = settings.bulk_rows_in_flight
        self._bulk_budgets: dict[str, RowBudget] = {}  # per model
        self._windows: dict[str, RowBudget] = {}  # per model: RERANKER_DISPATCH_WINDOW_ROWS

    async def score_pair(self, query: str, document: str, record: RequestRecord, priority: int = 0) -> float:
        async with self.models.lease() as model:
            outputs = await self._score(model, [query], [document], record=record, priority=priority)
        return float(outputs.score[0])

    async def rerank(self, body: RerankRequest, record: RequestRecord, priority: int = 0) -> RerankResponse:
        texts, warnings = _document_texts(body)
        self._check_count(len(texts), "documents")
        warnings += body.ignored_fields()
        _bypass(body, record)
        async with self._lease(body.model, warnings) as model:
            options = self._options(body, model, len(texts), keep_end=body.truncation_side == "left")
            instruction = body.instruction if model.takes_instructions else None
            if body.instruction is not None and instruction is None:
                warnings.append(f"instruction ignored: {model.name} is not a Qwen3 reranker")
            outputs = await self._score(model, [body.query] * len(texts), texts, instruction, options, record, priority)
        if not body.truncate:
            _refuse_truncated(outputs, model, "documents", options)
        scores = outputs.raw_score if body.use_activation is False else outputs.score
        raw = body.return_raw_scores or body.raw_scores
        chunked = options.max_chunks > 1
        truncated = int(outputs.truncated.sum())
        record.warnings = warnings
        return RerankResponse(
            id=uuid.uuid4().hex,
            model=model.name,
            results=[
                RerankResult(
                    index=i,
                    relevance_score=float(scores[i]),
                    document=_returned_document(body.documents[i]) if body.return_documents else None,
                    raw_score=float(outputs.raw_score[i]) if raw else None,
                    chunks=int(outputs.chunks[i]) if chunked else None,
                )
                for i in _ranking(scores, body.top_n)
            ],
            usage=RerankUsage(
                total_tokens=(tokens := int(outputs.num_tokens.sum())),
                prompt_tokens=tokens,
                truncated_documents=truncated,
                chunks=int(outputs.chunks.sum()) if chunked else None,
                cached_documents=record.cached,
            ),
            meta=RerankMeta(truncated_documents=truncated, warnings=warnings),
        )

    async def rerank_tei(self, body: TeiRerankRequest, record: RequestRecord, priority: int = 0) -> list[TeiRank]:
        """TEI's answer: a bare list, so its warnings travel only in the `x-warnings` header."""
        if not body.texts:  # TEI's status, error_type and message
            raise GatewayError(ErrorKind.EMPTY, "`texts` cannot be empty", field="texts")
        self._check_count(len(body.texts), "texts")
        warnings: list[str] = []
        async with self._lease(None, warnings) as model:
            options = self._options(None, model, len(body.texts), keep_end=body.truncation_direction.lower() == "left")
            outputs = await self._score(model, [body.query] * len(body.texts), body.texts, None, options, record,
                                         priority)
        if body.truncate is False:
            _refuse_truncated(outputs, model, "texts", options)
        scores = outputs.raw_score if body.raw_scores else outputs.score
        record.warnings = warnings
        return [TeiRank(index=i, score=float(scores[i]), text=body.texts[i] if body.return_text else None)
                for i in _ranking(scores)]

    async def score(self, body: ScoreRequest, record: RequestRecord, priority: int = 0) -> ScoreResponse:
        self._check_count(len(body.documents), "documents")
        warnings = body.ignored_fields()
        _bypass(body, record)
        async with self._lease(body.model, warnings) as model:
            options = self._options(body, model, len(body.documents), keep_end=body.truncation_side == "left")
            outputs = await self._score(model, body.queries, body.documents, options=options, record=record,
                                         priority=priority)
        if not body.truncate:
            _refuse_truncated(outputs, model, "text_2", options)
        scores = outputs.raw_score if body.use_activation is False else outputs.score
        tokens = int(outputs.num_tokens.sum())
        record.warnings = warnings
        return ScoreResponse(
            id=uuid.uuid4().hex,
            model=model.name,
            data=[ScoreData(index=i, score=float(s)) for i, s in enumerate(scores)],
            usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens, cached_documents=record.cached),
        )

    @asynccontextmanager
    async def _lease(self, requested: str | None, warnings: list[str]) -> AsyncIterator[ModelConfig]:
        """The model a request names, or the active one; with `unknown_model: active`, a name the gateway
        does not know is served by the active model, with a warning, instead of a 400."""
        if requested and self.settings.unknown_model == "active" and not await self.models.is_known(requested):
            warnings.append(f"model {requested!r} is unknown; the active model {self.models.active} answered")
            requested = None
        async with self.models.lease(requested) as model:
            yield model

    def _options(self, body: ScoringOptions | None, model: ModelConfig, documents: int, keep_end: bool) -> PairOptions:
        """The request's cuts and chunking, checked against the model's limit and the request bounds."""
        if body is not None and body.use_activation is False and model.scorer == contract.SCORER_BI_ENCODER:
            # vLLM's raw score is the logit before the sigmoid; a bi-encoder's cosine has no activation to skip.
            raise GatewayError(
                ErrorKind.UNSUPPORTED_OPTION,
                f"use_activation: false asks for the score before the activation, and {model.name} is a "
                "bi-encoder, whose score (a cosine) has none; leave use_activation out or set it true",
                field="use_activation",
            )
        chunks = (body and body.max_chunks_per_doc) or self.settings.max_chunks_per_doc
        if documents * chunks > self.settings.max_chunks_per_request:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"max_chunks_per_doc: {documents} documents x {chunks} chunks is over the limit of "
                f"{self.settings.max_chunks_per_request} chunks per request (RERANKER_MAX_CHUNKS_PER_REQUEST)",
                field="max_chunks_per_doc",
            )
        max_tokens = body.truncate_prompt_tokens if body else None
        if max_tokens is not None and max_tokens > model.max_length:
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"truncate_prompt_tokens: {max_tokens} is over the {model.max_length}-token limit of {model.name}; "
                "request a smaller truncation size, or -1 for the model's limit",
                field="truncate_prompt_tokens",
            )
        return PairOptions(
            max_document_tokens=getattr(body, "max_tokens_per_doc", None),
            max_tokens=None if max_tokens == -1 else max_tokens,
            max_chunks=chunks,
            keep_end=keep_end,
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
        options: PairOptions = PairOptions(),
        record: RequestRecord | None = None,
        priority: int = 0,
    ) -> ScoreOutputs:
        if record is not None:
            record.model = model.name  # set first: a request that fails is still counted under its model

        async def send(rows_queries: Sequence[str], rows_documents: Sequence[str]) -> list[ScoreOutputs]:
            return await self._dispatch(model, rows_queries, rows_documents, instruction, options, priority)

        if self.cache is None:
            outputs = ScoreOutputs.concatenate(await send(queries, documents))
        else:
            policy = (record and record.cache) or CachePolicy()
            outputs, cached = await self.cache.score(model.name, queries, documents, instruction, options, send,
                                                     policy, record and record.api_key)
            if record is not None:
                record.cached = cached
        _require_finite(outputs, model)
        if record is not None:
            record.record_scores(outputs)
            if record.cached == len(documents):  # no Triton time to report: no zeros in its histograms
                record.inference_s = record.queue_s = None
        return outputs

    async def _dispatch(self, model: ModelConfig, queries: Sequence[str], documents: Sequence[str],
                        instruction: str | None, options: PairOptions, priority: int) -> list[ScoreOutputs]:
        """Rows scored on the model: each chunk's outputs, in row order."""
        # Chunks of at most max_batch_size go out concurrently, so Triton's dynamic batcher can merge them
        # with other clients' work. A chunked document stays one row: the model expands it into its windows
        # inside the batch, where the micro-batches' token budget bounds the memory they take.
        size = max(model.max_batch_size, 1)
        level = triton_priority_level(model, priority)
        budget = self._bulk_budget(model) if is_bulk(priority) else None
        if budget is not None:  # two chunks fit the budget: one computing while the next waits in Triton's queue
            size = min(size, max(budget.limit // 2, 1))

        window = self._window(model)
        urgency = priority  # vLLM's: lower first; the gateway orders by it whether or not the model has levels

        async def chunk(start: int) -> ScoreOutputs:
            rows = (queries[start : start + size], documents[start : start + size])
            async with AsyncExitStack() as held:  # always budget, then window: no two chunks wait on each other
                if budget is not None:
                    await held.enter_async_context(budget.take(len(rows[1])))
                if window is not None:
                    await held.enter_async_context(window.take(len(rows[1]), urgency))
                return await self.triton.score(model.name, *rows, instruction, options, priority_level=level)

        try:
            return list(await asyncio.gather(*(chunk(i) for i in range(0, len(documents), size))))
        except GatewayError as exc:
            if exc.kind is ErrorKind.INVALID_REQUEST and options.max_tokens is not None:
                # The only request-made limit a model can refuse: too few tokens for its template.
                raise GatewayError(exc.kind, f"truncate_prompt_tokens: {exc.message}", "truncate_prompt_tokens") from None
            raise

    def _window(self, model: ModelConfig) -> RowBudget | None:
        if self.settings.dispatch_window_rows is None:
            return None
        window = self._windows.get(model.name)
        if window is None:
            window = self._windows[model.name] = RowBudget(self.settings.dispatch_window_rows)
        return window

    def _bulk_budget(self, model: ModelConfig) -> RowBudget | None:
        if self.bulk_rows is None:
            return None
        budget = self._bulk_budgets.get(model.name)
        if budget is None:
            budget = self._bulk_budgets[model.name] = RowBudget(self.bulk_rows)
        return budget

    async def switch_model(self, requested: str, keep_loaded: bool = False,
                           forwarded: bool = False) -> SwitchModelResponse:
        """Alone: switch here. In a cluster: on the coordinator, for every gateway (`forwarded`: another
        gateway passed the call on)."""
        if self.cluster is None:
            result = await self.models.switch(requested, keep_loaded)
        elif forwarded:
            result = await self.cluster.on_switch(requested, keep_loaded)
        else:
            result = await self.cluster.switch(requested, keep_loaded)
        return SwitchModelResponse(
            message=f"Switched to model {requested}",
            model=result.model,
            previous=result.previous,
            load_time_s=round(result.load_time_s, 3),
        )

    async def list_models(self) -> ModelsResponse:
        view = await self.models.view()
        return ModelsResponse(available=view.available, aliases=view.aliases, loaded=view.loaded, active=view.active,
                              precision=view.precision)

    async def openai_models(self) -> OpenAIModelList:
        """The loaded models in OpenAI's list shape (vLLM's /v1/models), the active one first."""
        view = await self.models.view()
        now = int(time.time())
        data = []
        for name in sorted(view.loaded, key=lambda name: (name != view.active, name)):
            config = self.models.loaded.get(name) or await self.triton.model_config(name)
            entry = catalog.BY_NAME.get(name)
            data.append(OpenAIModel(id=name, created=now, root=entry.hub_id if entry else name,
                                    max_model_len=config.max_length))
        return OpenAIModelList(data=data)

    async def health(self) -> HealthResponse:
        live = await self.triton.is_live()
        active = self.models.active
        ready = live and active is not None and await self.triton.is_ready(active)
        status = "ok" if ready else ("degraded" if live else "unavailable")
        return HealthResponse(status=status, triton_live=live, active_model=active)


def _bypass(body: ScoringOptions, record: RequestRecord) -> None:
    """The body's `cache: false`: the score cache is neither read nor written for this request."""
    if body.cache is False:
        record.cache = CachePolicy(read=False, write=False)


def _ranking(scores: np.ndarray, top_n: int | None = None) -> list[int]:
    """Indices by score, highest first; ties keep request order."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:top_n]


def _document_texts(body: RerankRequest) -> tuple[list[str], list[str]]:
    """The text scored for each document, and warnings. An object document is ranked on its `text`, or
    with `rank_fields` on one 'field: value' line per named field, in their order (Cohere v1)."""
    warnings = []
    if body.rank_fields and all(isinstance(document, str) for document in body.documents):
        warnings.append("rank_fields ignored: the documents are strings")
    texts = []
    for index, document in enumerate(body.documents):
        if isinstance(document, str):
            texts.append(document)
        elif body.rank_fields:
            fields = _fields(document)
            missing = next((name for name in body.rank_fields if name not in fields), None)
            if missing is not None:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"documents[{index}].{missing}: Field required (named in rank_fields)",
                                   field=f"documents[{index}].{missing}")
            texts.append(clean_text("\n".join(f"{name}: {_field_text(fields[name])}" for name in body.rank_fields)))
        elif document.text is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"documents[{index}].text: Field required (or name the fields to rank on in rank_fields)",
                               field=f"documents[{index}].text")
        else:
            texts.append(document.text)
    return texts, warnings


def _fields(document: RerankDocument) -> dict:
    """An object document's fields as the client sent them."""
    sent = {"text": document.text} if "text" in document.model_fields_set else {}
    return {**sent, **(document.model_extra or {})}


def _field_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _cleaned(value):
    """A JSON value with every string, keys included, cleaned of lone surrogates (they cannot be encoded
    in the response); the `Text` fields are cleaned when parsed, an object document's own fields are not."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(key): _cleaned(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    return value


def _returned_document(document: str | RerankDocument) -> RerankResultDocument:
    if isinstance(document, str):
        return RerankResultDocument(text=document)
    return RerankResultDocument.model_validate(_cleaned(_fields(document)))


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


def _refuse_truncated(outputs: ScoreOutputs, model: ModelConfig, field: str, options: PairOptions) -> None:
    """`truncate: false`: a pair over the model's limit (or, chunked, over its chunks) is an error naming it."""
    if outputs.truncated.any():
        index = int(outputs.truncated.argmax())
        if options.max_chunks > 1:
            message = (f"{field}[{index}] with the query needs more than {options.max_chunks} windows of the "
                       f"{model.max_length}-token limit of {model.name} "
                       f"({int(outputs.input_tokens[index] - outputs.num_tokens[index])} tokens were left out); "
                       "raise max_chunks_per_doc or send truncate: true")
        else:
            message = (f"{field}[{index}] with the query is {int(outputs.input_tokens[index])} tokens, over the "
                       f"{model.max_length}-token limit of {model.name}; shorten it or send truncate: true")
        raise GatewayError(ErrorKind.INPUT_TOO_LONG, message, field=f"{field}[{index}]")
