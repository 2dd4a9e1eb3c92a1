"""Which models are loaded and which is active, and switching through
Triton's repository API.

A request takes a lease on its model - the one it names, or the one active
when it starts - and keeps it to the end, whatever switch happens meanwhile.
A switch loads the new model, makes it active only once Triton reports it
READY, then (unless asked to keep it) waits for the old model's leases to
drain before unloading it. Switches are serialised; if the load fails, the
old model stays active.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from gateway.errors import ErrorKind, GatewayError
from gateway.serving.leases import Leases
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from gateway.tracing import Tracing
from gateway.serving.triton import InferenceBackend
from rerank_engine import catalog
from rerank_engine.model_config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchResult:
    model: str
    previous: str | None
    load_time_s: float


@dataclass(frozen=True)
class ModelsView:
    available: list[str]
    aliases: dict[str, str]
    loaded: list[str]
    active: str | None
    precision: dict[str, str]


class ModelManager:
    def __init__(self, triton: InferenceBackend, settings: GatewaySettings, metrics: GatewayMetrics,
                 tracing: Tracing | None = None) -> None:
        self.triton = triton
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing or Tracing(None)
        self.active: str | None = None
        self.loaded: dict[str, ModelConfig] = {}  # the models this gateway has seen READY
        self.leases = Leases()
        self._switch_lock = asyncio.Lock()
        self._triton_was_down = False
        # Told a model's name whenever this gateway loads it, sees it loaded elsewhere or stops counting it as
        # loaded: the score cache then trusts no fingerprint of it until a response confirms one.
        self.on_change: Callable[[str], None] = lambda model: None

    async def start(self) -> None:
        """Wait for Triton, then load and activate the default model.

        A default model that fails to load is logged, not fatal: the gateway
        stays up so an operator can switch to a model that works.
        """
        if not await self.wait_for_triton():
            self._triton_was_down = True  # the watcher loads the default model once Triton is up
            return
        try:
            result = await self.switch(self.settings.default_model)
            log.info("active model %s (loaded in %.1f s)", result.model, result.load_time_s)
        except GatewayError as exc:
            log.error("default model %s is not active: %s", self.settings.default_model, exc.message)

    async def wait_for_triton(self) -> bool:
        """Wait (up to triton_startup_timeout_s) until Triton is live; then start the switch series."""
        deadline = time.monotonic() + self.settings.triton_startup_timeout_s
        while not await self.triton.is_live():
            if time.monotonic() > deadline:
                log.error("Triton at %s is not live; starting without an active model", self.settings.triton_url)
                return False
            await asyncio.sleep(0.5)
        await self._start_model_series()
        return True

    async def watch(self, interval_s: float) -> None:
        """Reload this gateway's models whenever Triton comes back after being down
        (a restart by a supervisor or by compose's restart policy), or first comes up late."""
        while True:
            if not await self.triton.is_live():
                self._triton_was_down = True
            elif self._triton_was_down:
                # One attempt per outage: a model that cannot load is reported, not retried in a loop.
                self._triton_was_down = False
                await self._restore()
            await asyncio.sleep(interval_s)

    async def _start_model_series(self) -> None:
        try:
            self.metrics.known_models(m.name for m in await self.triton.repository())
        except GatewayError as exc:
            log.warning("could not list Triton's models for the metrics: %s", exc.message)

    async def _restore(self) -> None:
        await self._start_model_series()
        wanted = list(self.loaded) or [await self.resolve(self.settings.default_model)]
        async with self._switch_lock:
            try:
                for model in wanted:
                    if await self.triton.load(model):
                        log.warning("Triton was back without %s; loaded it again", model)
                    self.loaded[model] = await self.triton.model_config(model)
                    self.on_change(model)
            except GatewayError as exc:
                log.error("could not restore %s after Triton came back: %s", wanted, exc.message)
                return
            self.active = self.active or wanted[0]
            self.metrics.set_active(self.active)

    def known_name(self, name: str) -> str:
        """An alias or a catalog model's hub id to its Triton name; anything else unchanged."""
        return self.settings.model_aliases.get(name) or catalog.HUB_IDS.get(name) or name

    async def resolve(self, name: str, field: str = "model_name") -> str:
        """An alias, hub id or Triton model name to a Triton model name."""
        if name in self.settings.model_aliases or name in catalog.HUB_IDS:
            return self.known_name(name)
        names = [m.name for m in await self.triton.repository()]
        if name in names:
            return name
        valid = sorted(set(self.settings.model_aliases) | set(names))
        raise GatewayError(
            ErrorKind.UNKNOWN_MODEL, f"unknown model {name!r}; valid names: {', '.join(valid)}", field=field
        )

    async def is_known(self, name: str) -> bool:
        """Whether `name` is an alias, a catalog model's hub id or a model of Triton's repository."""
        try:
            await self.resolve(name, field="model")
        except GatewayError as exc:
            if exc.kind is ErrorKind.UNKNOWN_MODEL:
                return False
            raise
        return True

    @asynccontextmanager
    async def lease(self, requested: str | None = None) -> AsyncIterator[ModelConfig]:
        """The named model if it is loaded, else the active one, held until the block ends."""
        with self.tracing.span("model lease") as span:  # the wait: a named model may need Triton asked
            model = await self._loaded_model(requested) if requested else self.active
            if model is None:
                raise GatewayError(ErrorKind.NO_ACTIVE_MODEL, "no model is active; POST /switch_model to load one")
            span.set_attribute("reranker.model", model)
        self.leases.acquire(model)
        try:
            yield self.loaded[model]
        finally:
            self.leases.release(model)

    async def _loaded_model(self, requested: str) -> str:
        model = self.known_name(requested)
        if model in self.loaded:  # the common case costs no call to Triton
            return model
        model = await self.resolve(requested, field="model")
        if model not in self.loaded and await self.triton.is_ready(model):
            self.loaded[model] = await self.triton.model_config(model)  # loaded by another gateway
            self.on_change(model)
        if model not in self.loaded:
            loaded = ", ".join(sorted(self.loaded)) or "none"
            raise GatewayError(
                ErrorKind.MODEL_NOT_LOADED, f"model {requested!r} is not loaded; loaded models: {loaded}", field="model"
            )
        return model

    async def switch(self, requested: str, keep_loaded: bool = False) -> SwitchResult:
        target = await self.resolve(requested)
        started = time.perf_counter()
        try:
            result = await self._switch(target, keep_loaded)
        except GatewayError:
            self.metrics.switched(target, time.perf_counter() - started, ok=False)
            raise
        self.metrics.switched(target, time.perf_counter() - started, ok=True)
        return result

    async def _switch(self, target: str, keep_loaded: bool) -> SwitchResult:
        with self.tracing.span("switch lock wait", **{"reranker.model": target}):  # behind another switch
            await self._switch_lock.acquire()
        try:
            previous = self.active
            load_time = await self.ensure_loaded(target)
            await self.activate(target)
            if previous and previous != target and not keep_loaded:
                await self.retire(previous)
                await self.unload(previous)
            return SwitchResult(target, previous, load_time)
        finally:
            self._switch_lock.release()

    # --- the steps of a switch, also taken one by one by a cluster's coordinator (gateway.fleet.cluster)
    async def ensure_loaded(self, target: str) -> float:
        """Load `target` where it is not loaded yet; the seconds spent loading (0 when nothing was)."""
        started = time.perf_counter()
        with self.tracing.span("model load", **{"reranker.model": target}):
            loaded = await self.triton.load(target)
        load_time = time.perf_counter() - started if loaded else 0.0  # already loaded: nothing to wait for
        if loaded:
            self.on_change(target)
        if not await self.triton.is_ready(target):
            raise GatewayError(ErrorKind.MODEL_LOAD_FAILED, f"model {target} loaded but is not ready")
        return load_time

    async def activate(self, target: str) -> None:
        """New requests use `target` from now on (it must be READY)."""
        if target not in self.loaded:
            self.loaded[target] = await self.triton.model_config(target)
            self.on_change(target)
        self.active = target
        self.metrics.set_active(target)

    async def retire(self, model: str) -> bool:
        """Wait for `model`'s requests (up to drain_timeout_s), then stop counting it as loaded here;
        False if some were still running at the timeout."""
        with self.tracing.span("drain", **{"reranker.model": model}):  # the old model's requests finish
            drained = await self.leases.drained(model, self.settings.drain_timeout_s)
        if not drained:
            log.warning("%s still has %d requests after %.0f s; unloading anyway (Triton finishes them)",
                        model, self.leases.held(model), self.settings.drain_timeout_s)
        self.loaded.pop(model, None)
        self.on_change(model)
        return drained

    async def unload(self, model: str) -> None:
        try:
            await self.triton.unload(model)
        except GatewayError as exc:
            log.error("could not unload %s: %s", model, exc.message)

    async def view(self) -> ModelsView:
        states = await self.triton.repository()
        loaded = sorted(m.name for m in states if m.state == "READY")
        precision = {}
        for name in loaded:  # a model another gateway loaded is read from Triton
            try:
                precision[name] = (self.loaded.get(name) or await self.triton.model_config(name)).precision
            except GatewayError:  # unloaded since the index was read
                continue
        return ModelsView(
            available=sorted(m.name for m in states),
            aliases=dict(self.settings.model_aliases),
            loaded=loaded,
            active=self.active,
            precision=precision,
        )
