"""Where the engine's host time goes for bge on issue 6's workload, on the CPU:
the real tokenizer on 100-pair requests, against the Python and dispatch cost
of one packed forward per request.

The forward runs as the GPU runs it, one attention call per layer (a stand-in
for FlashAttention's varlen kernel: the CPU path's loop of one attention call
per span is not what a GPU host does), on a narrow model (bge's 12 layers and
real vocabulary, hidden 16) and 100 short rows, so that its arithmetic is
negligible and what is left is what the host spends issuing its ops; each op
is one or more kernel launches on a GPU, where a launch costs the host more
than a CPU dispatch. cProfile of whole `score` calls names the functions.

  python -m bench.host_profile --tokenizers /work/shared/data/tokenizers --out /tmp/host
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from bench.engine_bench import workload
from rerank_engine.engine import EngineConfig, load_scorer


def build_narrow_bge(folder: Path, tokenizers: Path) -> Path:
    import shutil

    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    if (folder / "config.json").is_file():
        return folder
    config = XLMRobertaConfig(vocab_size=250002, hidden_size=16, num_hidden_layers=12, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
                              layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=1)
    torch.manual_seed(0)
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizers / "xlm-roberta" / file, folder / file)
    return folder


def median_ms(call, rounds: int) -> float:
    samples = []
    for index in range(rounds):
        started = time.perf_counter()
        call(index)
        samples.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(samples), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizers", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/host-profile-models"))
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench_results/host_profile"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = build_narrow_bge(args.models_dir / "bge-narrow16", args.tokenizers)
    requests = workload(args.requests, 100)
    short = [[pair._replace(document=pair.document[:40]) for pair in pairs] for pairs in requests]
    result = {"cpu_threads": torch.get_num_threads(), "requests": args.requests, "docs": 100}
    from rerank_engine import packed

    # One op per layer for attention, as FlashAttention's varlen kernel is on a GPU.
    packed.varlen_kernel_available = lambda device, dtype: True
    packed.flash_varlen = lambda q, k, v, *rest: (q.clone(),)
    for label, fusions in (("reference", ()), ("fusions_exact", ("embed_norm", "add_norm"))):
        scorer = load_scorer(EngineConfig(scorer="cross_encoder", weights_path=str(folder), max_length=512,
                                          packed="true", fusions=fusions), torch.device("cpu"))
        result["tokens_per_request"] = int(sum(scorer.encode(p).num_tokens.sum() for p in requests) / len(requests))
        result["encode_ms_per_request"] = median_ms(lambda i: scorer.encode(requests[i % len(requests)]), args.requests)
        encoded = [scorer.encode(pairs) for pairs in short]
        result["short_rows_tokens_per_request"] = int(sum(e.num_tokens.sum() for e in encoded) / len(encoded))
        result[f"{label}_forward_ms_per_request"] = median_ms(
            lambda i: scorer.infer(encoded[i % len(encoded)]), args.requests)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            scorer.infer(encoded[0])
        # Ops that do work (each launches at least one kernel on a GPU): aten calls with no aten child.
        events = prof.events()
        parents = {e.cpu_parent.id for e in events if e.cpu_parent is not None and e.name.startswith("aten::")}
        result[f"{label}_leaf_aten_ops_per_forward"] = sum(1 for e in events if e.name.startswith("aten::")
                                                           and e.id not in parents)
    profiler = cProfile.Profile()
    profiler.enable()
    for pairs in short:
        scorer.score(pairs)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(25)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "host_profile.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "score_cprofile.txt").write_text(text.getvalue())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
