"""Request and response models of the gateway's HTTP API; the OpenAPI
schema is generated from these.

Request models are strict: every value must have the JSON type the schema
documents (pydantic's lax mode took 0 or "yes" for a boolean and true or "2"
for an integer, which the schema says are invalid)."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from rerank_engine import catalog

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    # JSON may carry "\ud800" alone; it cannot be encoded to UTF-8 for the model, so it becomes U+FFFD.
    return _LONE_SURROGATE.sub("\ufffd", value)


Text = Annotated[str, AfterValidator(clean_text)]
"""Every text field: a JSON string with lone surrogates replaced by U+FFFD (NUL bytes pass unchanged)."""


PRIORITY_HEADER = "x-request-priority"
"""The header form of `priority`, for clients whose SDK cannot add a body field; the body field wins."""

PRIORITY_DESCRIPTION = (
    "vLLM's request priority: lower is served first, 0 is normal. Each step below or above 0 moves the request "
    "one of the model's Triton priority levels up or down, within the levels it has (the shipped models: three, "
    f"so < 0 interactive, 0 normal, > 0 bulk). Also accepted as the {PRIORITY_HEADER} header."
)


def priority_field():
    return Field(None, ge=-(2**63), le=2**63 - 1, description=PRIORITY_DESCRIPTION)  # vLLM's int64 range


def _has_text(value: str) -> str:
    if not value.strip():
        raise ValueError("query must contain at least one non-whitespace character")
    return value


class RerankPairRequest(BaseModel):
    """The seed's single-pair contract."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"query": "今天天气如何？", "document": "今天晴天适合外出游玩"}]},
    )

    query: Text = Field(description="The search query.")
    document: Text = Field(description="One candidate document.")
    priority: int | None = priority_field()

    _query_has_text = field_validator("query")(_has_text)


class RerankPairResponse(BaseModel):
    score: float = Field(description="Relevance of the document to the query, from the active model.")


class ScoringOptions(BaseModel):
    """What every scoring request may say beyond its texts: how they are cut and chunked, and the fields
    of other vendors' clients that the gateway accepts without using them (named in `meta.warnings`)."""

    IGNORED: ClassVar[tuple[str, ...]] = ("user", "request_id")

    truncate: bool = Field(
        True, description="Cut pairs longer than the model's limit (reported in meta); false: refuse them with 400."
    )
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1,
        description="vLLM: read at most this many tokens of each sequence (the pair; each text for bi-encoders), "
        "at most the model's limit; -1: the model's limit.",
    )
    truncation_side: Literal["left", "right"] | None = Field(
        None, description="vLLM: 'left' cuts the start of a text instead of its end."
    )
    max_chunks_per_doc: int | None = Field(
        None, ge=1,
        description="Cohere v1: score a document longer than the model's window in up to this many overlapping "
        "token windows; its score is the best window's. Default: RERANKER_MAX_CHUNKS_PER_DOC (1: truncate).",
    )
    use_activation: bool | None = Field(
        None, description="vLLM: false returns each model's raw score (the logit) as the score; a bi-encoder, "
        "whose cosine has no activation, refuses it with 400."
    )
    cache: bool | None = Field(
        None, description="false: the score cache is neither read nor written for this request (the "
        "`Cache-Control` header's no-cache skips reading only, no-store writing only). Ignored while the cache is off.",
    )
    user: str | None = Field(None, description="OpenAI/vLLM end-user id: accepted and ignored (named in the warnings).")
    request_id: str | None = Field(None, description="vLLM's request id: accepted and ignored (named in the warnings).")

    @field_validator("truncate_prompt_tokens")
    @classmethod
    def _not_zero(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be -1 (the model's limit) or a positive number of tokens")
        return value

    @model_validator(mode="after")
    def _truncation_is_one_policy(self):
        cuts = [name for name in ("max_tokens_per_doc", "truncate_prompt_tokens") if getattr(self, name, None) is not None]
        if not self.truncate and cuts:
            raise ValueError(f"{cuts[0]} asks to cut texts; it cannot go with truncate: false")
        return self

    def ignored_fields(self) -> list[str]:
        """Warnings naming the fields sent that the gateway does not use."""
        return [f"{name} ignored: the gateway does not use it" for name in self.IGNORED if name in self.model_fields_set]


class RerankDocument(BaseModel):
    """A document as an object: `{"text": ...}` (Jina, Cohere v1), or any fields that `rank_fields` names
    (Cohere v1); every field comes back with the result when `return_documents` is set."""

    model_config = ConfigDict(extra="allow", strict=True)

    text: Text | None = None


class RerankRequest(ScoringOptions):
    """One query, many documents: the Cohere v1 and v2, Jina, vLLM and Infinity rerank request."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "model": "bge",
                    "query": "What is the capital of France?",
                    "documents": ["Paris is the capital of France.", "Berlin is in Germany.", {"text": "Lyon"}],
                    "top_n": 2,
                    "return_documents": True,
                }
            ]
        },
    )

    model: str | None = Field(None, description="Alias or Triton name of a loaded model; default: the active one.")
    query: Text = Field(description="The search query.")
    documents: list[Text | RerankDocument] = Field(
        min_length=1, description="Candidate documents, as strings or objects ({\"text\": ...}, or the fields of "
        "`rank_fields`)."
    )
    rank_fields: list[str] | None = Field(
        None, min_length=1,
        description="Cohere v1: the fields of object documents to rank on, in this order; the text scored is one "
        "'field: value' line per field (values other than strings as JSON). Ignored for string documents.",
    )
    top_n: int | None = Field(
        None, ge=1, description="Return the best n results (after sorting); larger than the documents: all."
    )
    return_documents: bool = Field(False, description="Echo each result's document text.")
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="Cut every document to this many tokens before scoring (Cohere v2)."
    )
    instruction: Text | None = Field(
        None,
        max_length=4096,  # well inside Qwen3's 8192-token prompt, so the query and document keep room
        description="Task instruction for Qwen3 rerankers; ignored, with a warning in meta, by the others.",
    )
    return_raw_scores: bool = Field(False, description="Add each result's raw logit (`raw_score`).")
    raw_scores: bool = Field(False, description="Alias of return_raw_scores (Infinity).")
    priority: int | None = priority_field()

    _query_has_text = field_validator("query")(_has_text)


class RerankResultDocument(BaseModel):
    """`{"text": ...}` for a string document; an object document as it was sent."""

    model_config = ConfigDict(extra="allow")

    text: str | None = None


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="Model score: [0, 1] for cross-encoders, cosine for bi-encoders.")
    document: RerankResultDocument | None = None
    raw_score: float | None = None
    chunks: int | None = Field(None, description="Windows the document was scored in, when chunking is on.")


class RerankUsage(BaseModel):
    total_tokens: int = Field(description="Tokens the model read, after truncation, over every chunk.")
    prompt_tokens: int = Field(description="The same count, under vLLM's name.")
    truncated_documents: int = Field(0, description="Documents cut to fit the model or max_tokens_per_doc.")
    chunks: int | None = Field(None, description="Windows scored over all documents, when chunking is on.")
    cached_documents: int | None = Field(
        None, description="Documents answered from the score cache, not the model (also the x-cache-hits header); "
        "present while the cache is on. Tokens count them as if scored."
    )


class RerankMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: dict = Field(default_factory=lambda: {"version": "2"})
    billed_units: dict = Field(default_factory=lambda: {"search_units": 1})
    truncated_documents: int = 0
    warnings: list[str] = Field(default_factory=list)


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage
    meta: RerankMeta


class TeiRerankRequest(BaseModel):
    """Text Embeddings Inference's rerank request, answered with TEI's bare list."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"query": "What is Deep Learning?", "texts": ["Deep Learning is ...", "Cake"],
                                         "return_text": True}]},
    )

    query: Text = Field(description="The search query.")
    texts: list[Text] = Field(description="Candidate documents; an empty list is refused as TEI does (400, `empty`).")
    truncate: bool | None = Field(
        None, description="false: refuse a pair longer than the model's limit with 400; default: cut it."
    )
    truncation_direction: Literal["right", "left", "Right", "Left"] = Field(
        "right", description="Which end of a text a cut removes."
    )
    raw_scores: bool = Field(False, description="Scores before the activation (the logit; cosine for bi-encoders).")
    return_text: bool = Field(False, description="Echo each text.")

    _query_has_text = field_validator("query")(_has_text)


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def _rerank_form(body: Any) -> str:
    if isinstance(body, dict) and "documents" in body:
        return "list-form"
    return "tei-form" if isinstance(body, dict) and "texts" in body else "pair-form"


RerankAnyRequest = Annotated[
    Union[
        Annotated[RerankPairRequest, Tag("pair-form")],
        Annotated[RerankRequest, Tag("list-form")],
        Annotated[TeiRerankRequest, Tag("tei-form")],
    ],
    Discriminator(_rerank_form),
]
"""/rerank takes the seed's single pair, the list form of /v1/rerank, or TEI's `{query, texts}`: the body's
fields decide (`documents`: the list form; `texts`: TEI's; otherwise the pair)."""


class ScoreRequest(ScoringOptions):
    """Scores of pairs in request order, vLLM's /score: one query with many documents, or one per document,
    under any of vLLM's names for the two sides (text_1/text_2, queries/documents, queries/items, data_1/data_2)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"text_1": "What is the capital of France?",
                                         "text_2": ["Paris is the capital of France.", "Berlin is in Germany."]}]},
    )

    FORMS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("text_1", "text_2"), ("queries", "documents"), ("queries", "items"), ("data_1", "data_2"))

    model: str | None = Field(None, description="Alias or Triton name of a loaded model; default: the active one.")
    text_1: Text | list[Text] | None = Field(None, description="Query, or one query per pair.")
    text_2: Text | list[Text] | None = Field(None, description="Document, or one document per pair.")
    queries: Text | list[Text] | None = Field(None, description="Query, or one query per pair (with `documents`).")
    documents: Text | list[Text] | None = Field(None, description="Document, or one per pair (with `queries`).")
    items: Text | list[Text] | None = Field(None, description="vLLM's other name of `documents`.")
    data_1: Text | list[Text] | None = Field(None, description="vLLM's other name of `text_1`.")
    data_2: Text | list[Text] | None = Field(None, description="vLLM's other name of `text_2`.")
    priority: int | None = priority_field()

    @model_validator(mode="after")
    def _one_form(self) -> "ScoreRequest":
        sent = {name for pair in self.FORMS for name in pair if getattr(self, name) is not None}
        forms = [pair for pair in self.FORMS if sent & set(pair) and (pair[1] in sent or pair[0] != "queries")]
        if len(forms) != 1 or sent - set(forms[0]):
            raise ValueError("give one pair of fields: text_1 and text_2, queries and documents (or items), "
                             "or data_1 and data_2")
        first, second = (getattr(self, name) for name in forms[0])
        if first is None or second is None:
            raise ValueError(f"both sides of the pairs are required: {forms[0][0]} and {forms[0][1]}")
        first = [first] if isinstance(first, str) else first
        second = [second] if isinstance(second, str) else second
        if len(first) == 1 and len(second) > 1:
            first = first * len(second)
        if len(first) != len(second) or not first:
            raise ValueError(f"{len(first)} queries for {len(second)} documents: give one query, or one per document")
        for text in first:
            _has_text(text)
        for name in sent:
            setattr(self, name, None)
        self.queries, self.documents = first, second
        return self


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    cached_documents: int | None = Field(
        None, description="Pairs answered from the score cache, not the model; present while the cache is on."
    )


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


def _invocation_form(body: Any) -> str:
    return "rerank" if isinstance(body, dict) and "query" in body else "score"


InvocationRequest = Annotated[
    Union[Annotated[RerankRequest, Tag("rerank")], Annotated[ScoreRequest, Tag("score")]],
    Discriminator(_invocation_form),
]
"""SageMaker's one route, /invocations, routed by the body as vLLM routes it (its rerank request is tried first,
then its score request): `query` (with `documents`) is a rerank request, anything else a score request. A body
that fits neither is refused naming the field the chosen form lacks, not with vLLM's "no suitable handler"."""


class SwitchModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{"model_name": "bge"}]})

    model_name: str = Field(
        min_length=1, description=f"An alias ({catalog.alias_list()}), a Hugging Face id or a Triton model name."
    )
    keep_loaded: bool = Field(
        False, description="Keep the previous model loaded, so requests can still name it (memory allowing)."
    )


class SwitchModelResponse(BaseModel):
    message: str = Field(examples=["Switched to model bge"])
    model: str = Field(description="The Triton model now active.")
    previous: str | None = Field(description="The model active before; unloaded unless kept or the same.")
    load_time_s: float = Field(description="Seconds spent loading the new model (0 when it was loaded already).")


class OpenAIModel(BaseModel):
    id: str = Field(description="The Triton model name, which requests may send as `model`.")
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time of this answer, as vLLM gives it.")
    owned_by: str = "reranker"
    root: str = Field(description="The Hugging Face id of a catalog model (also accepted as `model`), else the name.")
    max_model_len: int = Field(description="The most tokens of one sequence the model reads.")


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel] = Field(description="The loaded models, the active one first.")


class ModelsResponse(BaseModel):
    available: list[str] = Field(description="Models in Triton's repository.")
    aliases: dict[str, str] = Field(description="Short names accepted by /switch_model.")
    loaded: list[str] = Field(description="Models Triton has READY.")
    active: str | None = Field(description="The model /rerank uses.")
    precision: dict[str, str] = Field(
        default_factory=dict,
        description="Per loaded model, what its config.pbtxt runs it in: fp8 (E4M3 linear layers), a dtype, or "
        "auto (float32 on a CPU; on a GPU bfloat16 for Qwen3 and float16 for the encoders).",
    )


class HealthResponse(BaseModel):
    status: str = Field(description="'ok' when the gateway can serve, else 'degraded' or 'unavailable'.")
    triton_live: bool
    active_model: str | None


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, naming the field and the limit where there is one.")
    error_type: str
    field: str | None = None
    detail: str = Field(description="The same message, where FastAPI's and Jina's clients read it.")


class ActivateRequest(BaseModel):
    """`POST /internal/activate`, from the switch coordinator to each gateway: the cluster's new state."""

    model_config = ConfigDict(extra="forbid", strict=True)

    epoch: str = Field(min_length=1, description="The coordinator process that made the state.")
    generation: int = Field(ge=1, description="One more with every switch.")
    active: str = Field(min_length=1, description="The model new requests use.")
    loaded: list[str] = Field(description="The models that stay loaded, the active one first.")
    from_instance: str = Field(description="The coordinator's instance id (a gateway ignores its own call).")
    drain_timeout_s: float = Field(ge=0, description="How long the coordinator waits for the drain.")
