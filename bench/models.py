"""The models of `model_repository/` as the benchmarks need them, read from each
`config.pbtxt`: Triton name, weights folder, scorer kind, engine parameters,
batching limits and input tensors.

Plain text parsing, no torch, no tritonclient: the perf_analyzer data
generator and gateway-only benchmark runs use it on machines without them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_REPOSITORY = REPO_ROOT / "model_repository"

ALIASES = {"bge": "bge-reranker-base", "qwen4b": "qwen3-reranker-4b", "qwen8b": "qwen3-reranker-8b",
           "minilm": "minilm-l6"}
"""The gateway's default aliases (gateway/settings.py), repeated because importing it needs pydantic."""

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS.txt"
"""bench.random_models writes it into every folder it builds, so results can be labelled random-weight ones."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    data_type: str  # as config.pbtxt spells it: TYPE_STRING, ...
    dims: tuple[int, ...]
    optional: bool


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the Triton model name
    config_path: Path
    max_batch_size: int
    max_queue_delay_us: int
    inputs: tuple[InputSpec, ...]
    parameters: dict[str, str] = field(default_factory=dict)

    @property
    def scorer(self) -> str:
        return self.parameters["scorer"]

    @property
    def folder(self) -> str:
        """The weights folder inside the models folder (`models/<folder>` in config.pbtxt)."""
        return Path(self.parameters["weights_path"]).name

    def weights_dir(self, models_dir: Path) -> Path:
        path = self.parameters["weights_path"]
        return Path(path) if Path(path).is_absolute() else models_dir / self.folder

    def serving_dtype(self, on_gpu: bool) -> str:
        """The dtype the engine serves this model in (rerank_engine.engine.EngineConfig.torch_dtype)."""
        dtype = self.parameters.get("dtype") or "auto"
        if dtype != "auto":
            return dtype
        if not on_gpu:
            return "float32"
        return "bfloat16" if self.scorer == "qwen3_reranker" else "float16"

    @property
    def max_length(self) -> int:
        return int(self.parameters.get("max_length") or 512)


def read_config(path: Path) -> ModelSpec:
    # Whole-line comments only: a '#' inside a string value (a weights hint, say) is text.
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    inputs = tuple(
        InputSpec(
            name=match.group(1),
            data_type=match.group(2),
            dims=tuple(int(d) for d in match.group(3).split(",") if d.strip()),
            optional="optional: true" in match.group(0),
        )
        for match in re.finditer(r'\{\s*name:\s*"(\w+)",\s*data_type:\s*(\w+),\s*dims:\s*\[([^\]]*)\][^}]*\}',
                                 _section(text, "input"))
    )
    delay = re.search(r"max_queue_delay_microseconds:\s*(\d+)", text)
    return ModelSpec(
        name=re.search(r'^name:\s*"([^"]+)"', text, re.M).group(1),
        config_path=path,
        max_batch_size=int(re.search(r"^max_batch_size:\s*(\d+)", text, re.M).group(1)),
        max_queue_delay_us=int(delay.group(1)) if delay else 0,
        inputs=inputs,
        parameters=dict(re.findall(r'key:\s*"(\w+)",\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}', text)),
    )


def _section(text: str, key: str) -> str:
    """The bracketed list after `key [` at the start of a line."""
    start = re.search(rf"^{key}\s*\[", text, re.M)
    if not start:
        return ""
    depth, index = 0, start.end() - 1
    for index in range(start.end() - 1, len(text)):
        depth += {"[": 1, "]": -1}.get(text[index], 0)
        if depth == 0:
            break
    return text[start.end():index]


def repository_models(repository: Path = MODEL_REPOSITORY) -> dict[str, ModelSpec]:
    specs = (read_config(path) for path in sorted(repository.glob("*/config.pbtxt")))
    return {spec.name: spec for spec in specs}


def resolve(name: str, repository: Path = MODEL_REPOSITORY) -> ModelSpec:
    """A Triton model name, a gateway alias or a weights folder name (any case) to its model."""
    models = repository_models(repository)
    wanted = ALIASES.get(name.lower(), name).lower()
    for spec in models.values():
        if wanted in (spec.name.lower(), spec.folder.lower()):
            return spec
    valid = sorted({*models, *ALIASES, *(s.folder for s in models.values())})
    raise SystemExit(f"unknown model {name!r}; valid names: {', '.join(valid)}")
