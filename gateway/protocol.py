"""Request and response models of the gateway's HTTP API; the OpenAPI
schema is generated from these."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RerankPairRequest(BaseModel):
    """The seed's single-pair contract."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "今天天气如何？", "document": "今天晴天适合外出游玩"}]},
    )

    query: str = Field(description="The search query.")
    document: str = Field(description="One candidate document.")

    @field_validator("query")
    @classmethod
    def _query_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must contain at least one non-whitespace character")
        return value


class RerankPairResponse(BaseModel):
    score: float = Field(description="Relevance of the document to the query, from the active model.")


class SwitchModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"model_name": "bge"}]})

    model_name: str = Field(
        min_length=1, description="An alias (bge, qwen4b, qwen8b, minilm) or a Triton model name."
    )


class SwitchModelResponse(BaseModel):
    message: str = Field(examples=["Switched to model bge"])
    model: str = Field(description="The Triton model now active.")
    previous: str | None = Field(description="The model active before, unloaded unless it is the same.")
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
