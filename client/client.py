"""Thin clients over the gateway's HTTP API (httpx), synchronous and
asynchronous. Errors come back as `RerankerError` carrying the HTTP status and
the gateway's error type. `api_key` is sent as `Authorization: Bearer <key>`."""

from __future__ import annotations

from typing import Any, Sequence

import httpx

DEFAULT_URL = "http://localhost:8000"


class RerankerError(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"{status} {error_type}: {message}")
        self.status = status
        self.error_type = error_type
        self.message = message


def _result(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    try:
        body = response.json()
    except ValueError:
        raise RerankerError(response.status_code, "error", response.text) from None
    raise RerankerError(response.status_code, body.get("error_type", "error"), body.get("error", response.text))


def _options(api_key: str | None, httpx_options: dict[str, Any]) -> dict[str, Any]:
    if api_key is None:
        return httpx_options
    headers = {**(httpx_options.pop("headers", None) or {}), "authorization": f"Bearer {api_key}"}
    return {**httpx_options, "headers": headers}


def _rerank_body(query: str, documents: Sequence[str], options: dict[str, Any]) -> dict:
    return {"query": query, "documents": list(documents), **{k: v for k, v in options.items() if v is not None}}


def _score_body(queries: Sequence[str], documents: Sequence[str], model: str | None) -> dict:
    body = {"queries": list(queries), "documents": list(documents)}
    return body if model is None else {**body, "model": model}


class RerankerClient:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 60.0, api_key: str | None = None,
                 **httpx_options: Any) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout, **_options(api_key, httpx_options))

    def rerank(self, query: str, document: str) -> float:
        """The seed's single pair, scored by the active model."""
        return _result(self._http.post("/rerank", json={"query": query, "document": document}))["score"]

    def rerank_documents(self, query: str, documents: Sequence[str], **options: Any) -> dict:
        """POST /v1/rerank; options: model, top_n, return_documents, instruction, max_tokens_per_doc, ..."""
        return _result(self._http.post("/v1/rerank", json=_rerank_body(query, documents, options)))

    def score_pairs(self, queries: Sequence[str], documents: Sequence[str], model: str | None = None) -> dict:
        return _result(self._http.post("/v1/score", json=_score_body(queries, documents, model)))

    def switch_model(self, model_name: str, keep_loaded: bool = False) -> dict:
        return _result(self._http.post("/switch_model", json={"model_name": model_name, "keep_loaded": keep_loaded}))

    def models(self) -> dict:
        return _result(self._http.get("/models"))

    def health(self) -> dict:
        return _result(self._http.get("/health"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RerankerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRerankerClient:
    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 60.0, api_key: str | None = None,
                 **httpx_options: Any) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, **_options(api_key, httpx_options))

    async def rerank(self, query: str, document: str) -> float:
        return _result(await self._http.post("/rerank", json={"query": query, "document": document}))["score"]

    async def rerank_documents(self, query: str, documents: Sequence[str], **options: Any) -> dict:
        return _result(await self._http.post("/v1/rerank", json=_rerank_body(query, documents, options)))

    async def score_pairs(self, queries: Sequence[str], documents: Sequence[str], model: str | None = None) -> dict:
        return _result(await self._http.post("/v1/score", json=_score_body(queries, documents, model)))

    async def switch_model(self, model_name: str, keep_loaded: bool = False) -> dict:
        body = {"model_name": model_name, "keep_loaded": keep_loaded}
        return _result(await self._http.post("/switch_model", json=body))

    async def models(self) -> dict:
        return _result(await self._http.get("/models"))

    async def health(self) -> dict:
        return _result(await self._http.get("/health"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncRerankerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
