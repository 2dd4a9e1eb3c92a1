"""The gateway's use cases, between the HTTP routes and Triton: scoring
on a leased model, switching models, and reporting health."""

from __future__ import annotations

from gateway.model_manager import ModelManager
from gateway.protocol import HealthResponse, ModelsResponse, SwitchModelResponse
from gateway.triton import TritonBackend


class RerankService:
    def __init__(self, triton: TritonBackend, models: ModelManager) -> None:
        self.triton = triton
        self.models = models

    async def score_pair(self, query: str, document: str) -> float:
        async with self.models.lease() as model:
            outputs = await self.triton.score(model, query, [document])
        return float(outputs.score[0])

    async def switch_model(self, requested: str) -> SwitchModelResponse:
        result = await self.models.switch(requested)
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
