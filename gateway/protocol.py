"""Request and response models of the gateway's HTTP API; the OpenAPI
schema is generated from these.

Request models are strict: every value must have the JSON type the schema
documents (pydantic's lax mode took 0 or "yes" for a boolean and true or "2"
for an integer, which the schema says are invalid)."""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

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


def _clean(value: str) -> str:
    # JSON may carry "\ud800" alone; it cannot be encoded to UTF-8 for the model, so it becomes U+FFFD.
    return _LONE_SURROGATE.sub("\ufffd", value)


Text = Annotated[str, AfterValidator(_clean)]
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


class RerankDocument(BaseModel):
    """A document as an object (Jina and Cohere v1 accept `{"text": ...}`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    text: Text


class RerankRequest(BaseModel):
    """One query, many documents: the Cohere v2 / Jina rerank request."""

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
        min_length=1, description="Candidate documents, as strings or {\"text\": ...} objects."
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
    truncate: bool = Field(
        True, description="Cut pairs longer than the model's limit (reported in meta); false: refuse them with 400."
    )
    return_raw_scores: bool = Field(False, description="Add each result's raw logit (`raw_score`).")
    raw_scores: bool = Field(False, description="Alias of return_raw_scores.")
    priority: int | None = priority_field()

    _query_has_text = field_validator("query")(_has_text)

    @model_validator(mode="after")
    def _truncation_is_one_policy(self) -> "RerankRequest":
        if not self.truncate and self.max_tokens_per_doc is not None:
            raise ValueError("max_tokens_per_doc asks to cut documents; it cannot go with truncate: false")
        return self

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


class RerankResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int = Field(description="Position of the document in the request.")
    relevance_score: float = Field(description="Model score: [0, 1] for cross-encoders, cosine for bi-encoders.")
    document: RerankResultDocument | None = None
    raw_score: float | None = None


class RerankUsage(BaseModel):
    total_tokens: int = Field(description="Tokens the model read, after truncation.")
    truncated_documents: int = Field(0, description="Documents cut to fit the model or max_tokens_per_doc.")


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


RerankAnyRequest = Annotated[
    Union[Annotated[RerankPairRequest, Tag("pair-form")], Annotated[RerankRequest, Tag("list-form")]],
    Discriminator(lambda body: "list-form" if isinstance(body, dict) and "documents" in body else "pair-form"),
]
"""/rerank takes the seed's single pair, or the list form of /v1/rerank."""


class ScoreRequest(BaseModel):
    """Arbitrary (text_1, text_2) pairs, vLLM style, or queries/documents lists."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"text_1": "What is the capital of France?",
                                         "text_2": ["Paris is the capital of France.", "Berlin is in Germany."]}]},
    )

    model: str | None = Field(None, description="Alias or Triton name of a loaded model; default: the active one.")
    text_1: Text | list[Text] | None = Field(None, description="Query, or one query per pair.")
    text_2: Text | list[Text] | None = Field(None, description="Document, or one document per pair.")
    queries: list[Text] | None = Field(None, description="One query per pair (with `documents`).")
    documents: list[Text] | None = Field(None, description="One document per pair (with `queries`).")
    truncate: bool = Field(True, description="As in /v1/rerank.")
    priority: int | None = priority_field()

    @model_validator(mode="after")
    def _one_form(self) -> "ScoreRequest":
        vllm = self.text_1 is not None or self.text_2 is not None
        if vllm == (self.queries is not None or self.documents is not None):
            raise ValueError("give either text_1 and text_2, or queries and documents")
        first, second = (self.text_1, self.text_2) if vllm else (self.queries, self.documents)
        if first is None or second is None:
            raise ValueError("both sides of the pairs are required")
        first = [first] if isinstance(first, str) else first
        second = [second] if isinstance(second, str) else second
        if len(first) == 1 and len(second) > 1:
            first = first * len(second)
        if len(first) != len(second) or not first:
            raise ValueError(f"{len(first)} queries for {len(second)} documents: give one query, or one per document")
        for text in first:
            _has_text(text)
        self.queries, self.documents, self.text_1, self.text_2 = first, second, None, None
        return self


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[ScoreData]
    usage: ScoreUsage


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


class ModelsResponse(BaseModel):
    available: list[str] = Field(description="Models in Triton's repository.")
    aliases: dict[str, str] = Field(description="Short names accepted by /switch_model.")
    loaded: list[str] = Field(description="Models Triton has READY.")
    active: str | None = Field(description="The model /rerank uses.")


class HealthResponse(BaseModel):
    status: str = Field(description="'ok' when the gateway can serve, else 'degraded' or 'unavailable'.")
    triton_live: bool
    active_model: str | None


class ErrorResponse(BaseModel):
    error: str = Field(description="What went wrong, naming the field and the limit where there is one.")
    error_type: str
    field: str | None = None
