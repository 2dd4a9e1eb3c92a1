"""A Triton model's configuration, as every part of this project reads it:
parsed in one place.

Three readers see the same `config.pbtxt` in different forms, and all go
through `ModelConfig.from_dict`:
- the Triton model (`model_repository/reranker_model.py`) gets it from Triton
  as JSON (`args["model_config"]`);
- the gateway asks Triton for it over gRPC (`get_model_config(as_json=True)`);
- the benchmarks and tests read the file itself: `from_pbtxt` parses it with
  Triton's own protobuf schema (`model_config_pb2`, shipped in tritonclient)
  and converts it to that same JSON form.

Importable without torch or pydantic (tritonclient is needed by `from_pbtxt` only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from rerank_engine import contract


@dataclass(frozen=True)
class InputSpec:
    name: str
    data_type: str  # as config.pbtxt spells it: TYPE_STRING, ...
    dims: tuple[int, ...]
    optional: bool


@dataclass(frozen=True)
class ModelConfig:
    name: str
    max_batch_size: int
    max_queue_delay_us: int
    inputs: tuple[InputSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    instance_count: int = 1  # instances per device (KIND_AUTO: per GPU, or on the CPU), summed over groups
    priority_levels: int = 0  # the dynamic batcher's priority levels; 0: none
    default_priority_level: int = 0

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "ModelConfig":
        """Triton's JSON form of a model config. Int64 fields may arrive as strings (protobuf's JSON mapping)."""
        batching = config.get("dynamic_batching") or {}
        params = {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}
        inputs = tuple(
            InputSpec(
                name=item["name"],
                data_type=item.get("data_type", ""),
                dims=tuple(int(d) for d in item.get("dims", ())),
                optional=bool(item.get("optional", False)),
            )
            for item in config.get("input", ())
        )
        return cls(
            name=config.get("name", ""),
            max_batch_size=int(config.get("max_batch_size") or 0),
            max_queue_delay_us=int(batching.get("max_queue_delay_microseconds") or 0),
            inputs=inputs,
            parameters=MappingProxyType(params),
            instance_count=sum(int(group.get("count") or 1) for group in config.get("instance_group", ())) or 1,
            priority_levels=int(batching.get("priority_levels") or 0),
            default_priority_level=int(batching.get("default_priority_level") or 0),
        )

    @classmethod
    def from_pbtxt(cls, path: Path) -> "ModelConfig":
        from google.protobuf import json_format, text_format
        from tritonclient.grpc import model_config_pb2

        message = text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())
        return cls.from_dict(json_format.MessageToDict(message, preserving_proto_field_name=True))

    @property
    def scorer(self) -> str:
        return self.parameters.get(contract.PARAM_SCORER, "")

    @property
    def max_length(self) -> int:
        return int(self.parameters.get(contract.PARAM_MAX_LENGTH) or contract.DEFAULT_MAX_LENGTH)

    @property
    def takes_instructions(self) -> bool:
        return self.scorer == contract.SCORER_QWEN3

    @property
    def weights_path(self) -> str:
        return self.parameters.get(contract.PARAM_WEIGHTS_PATH, "")

    @property
    def weights_folder(self) -> str:
        """The weights folder's name (`models/<folder>` in config.pbtxt)."""
        return Path(self.weights_path).name

    def weights_dir(self, models_dir: Path) -> Path:
        """Where the weights are: an absolute `weights_path` as it is, `models/<folder>` inside `models_dir`."""
        path = Path(self.weights_path)
        return path if path.is_absolute() else Path(models_dir) / self.weights_folder

    def serving_dtype(self, on_gpu: bool) -> str:
        return serving_dtype(self.scorer, self.parameters.get(contract.PARAM_DTYPE) or "auto", on_gpu)

    @property
    def precision(self) -> str:
        """What /models reports: the dtype parameter, or the quantization when one is set."""
        return self.parameters.get(contract.PARAM_QUANTIZATION) or self.parameters.get(contract.PARAM_DTYPE) or "auto"


def serving_dtype(scorer: str, dtype: str, on_gpu: bool) -> str:
    """The torch dtype name a model is served in: `dtype` unless it is `auto`, which means float32 on
    the CPU, and on a GPU bfloat16 for Qwen3 (trained in bf16; its activations overflow float16) and
    float16 for the encoders (float16's extra mantissa bits)."""
    if dtype != "auto":
        return dtype
    if not on_gpu:
        return "float32"
    return "bfloat16" if scorer == contract.SCORER_QWEN3 else "float16"


def repository_models(repository: Path) -> dict[str, ModelConfig]:
    """Every model of a Triton model repository folder, by name."""
    configs = (ModelConfig.from_pbtxt(path) for path in sorted(Path(repository).glob("*/config.pbtxt")))
    return {config.name: config for config in configs}
