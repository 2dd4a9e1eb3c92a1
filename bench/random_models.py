"""Random-weight models of the real architectures and sizes, saved with the
real tokenizers into a models folder laid out as `model_repository/` expects.

Real weights cannot be downloaded everywhere (CI, the lent GPU machines), but a
random-weight model of the real shape runs at the real speed, so benchmarks
and GPU checks use these. Their scores are meaningless; label results so.

  python -m bench.random_models --models-dir /tmp/models --tokenizers ../shared/data/tokenizers \
      bge-reranker-base Qwen3-Reranker-4B
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, XLMRobertaConfig, XLMRobertaForSequenceClassification

from bench.models import RANDOM_WEIGHTS_MARKER


def _qwen3(hidden: int, intermediate: int, tie: bool) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=151936, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_theta=1_000_000, rms_norm_eps=1e-6, tie_word_embeddings=tie,
    )


# folder -> (config, model class, tokenizer folder); shapes from the published config.json files.
ARCHITECTURES = {
    "bge-reranker-base": (
        XLMRobertaConfig(
            vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=1,
        ),
        XLMRobertaForSequenceClassification,
        "xlm-roberta",
    ),
    "Qwen3-Reranker-4B": (_qwen3(2560, 9728, tie=True), Qwen3ForCausalLM, "qwen3"),
    "Qwen3-Reranker-8B": (_qwen3(4096, 12288, tie=False), Qwen3ForCausalLM, "qwen3"),
}


def build(name: str, models_dir: Path, tokenizers: Path, device: str, dtype: torch.dtype) -> Path:
    config, model_cls, tokenizer = ARCHITECTURES[name]
    target = models_dir / name
    if (target / "config.json").is_file():
        return target
    torch.manual_seed(0)
    # Initialising on the GPU takes seconds where the CPU takes minutes for 8B parameters.
    with torch.device(device):
        model = model_cls(config).to(dtype)
    model.save_pretrained(target)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizers / tokenizer / file, target / file)
    (target / RANDOM_WEIGHTS_MARKER).write_text(
        f"Random weights of the real {name} architecture and size, real tokenizer (bench.random_models): "
        "for speed measurements only, the scores are meaningless.\n"
    )
    del model
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", choices=sorted(ARCHITECTURES))
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--tokenizers", type=Path, required=True, help="folder with xlm-roberta/ and qwen3/")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "float16", "bfloat16"))
    args = parser.parse_args()
    for name in args.names:
        started = time.perf_counter()
        path = build(name, args.models_dir, args.tokenizers, args.device, getattr(torch, args.dtype))
        print(f"{name}: {path} ({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
