"""Reads the models' batch log lines (rerank_engine.telemetry: one JSON line
per executed batch, in Triton's log) and says where a model instance's time
went between its batches: the engine, the rest of `execute`, the previous
batch's telemetry, the garbage collector, and Triton's hand-over of the next
batch (`idle_ms`). Hand-overs longer than `--stall-ms` are listed one by one.

  python -m bench.batch_log serve.log [more logs] [--model qwen3-reranker-4b-fp8] [--stall-ms 30]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

LINE = re.compile(r'^[IWE]\d{4} (\d\d:\d\d:\d\d\.\d+) .*\] "(\{.*\})"$')
FIELDS = ("compute_ms", "host_ms", "telemetry_ms", "gc_ms", "idle_ms")


def batches(text: str, model: str | None = None) -> list[dict]:
    """The batch records of a Triton log, in order, each with its log time (`at`)."""
    found = []
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        record = json.loads(match.group(2).replace('\\"', '"'))
        if record.get("event") == "batch" and (model is None or record.get("model") == model):
            found.append({"at": match.group(1), **record})
    return found


def summary(records: list[dict], stall_ms: float = 30.0) -> dict:
    """Per field the median and sum over the batches, and the hand-overs over `stall_ms`."""
    result: dict = {"batches": len(records)}
    for field in FIELDS:
        values = [r[field] for r in records if r.get(field) is not None]
        if values:
            result[field] = {"median": round(statistics.median(values), 3), "sum": round(sum(values), 1)}
    stalls = [(r["at"], r["idle_ms"]) for r in records if (r.get("idle_ms") or 0) > stall_ms]
    result["stalls"] = {"count": len(stalls), "sum_ms": round(sum(ms for _, ms in stalls), 1),
                        "each": [{"at": at, "idle_ms": ms} for at, ms in stalls]}
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--model", help="only this model's batches")
    parser.add_argument("--stall-ms", type=float, default=30.0)
    args = parser.parse_args(argv)
    results = []
    for path in args.logs:
        results.append({"log": str(path), **summary(batches(path.read_text(errors="replace"), args.model),
                                                    args.stall_ms)})
        print(json.dumps(results[-1]))
    return results


if __name__ == "__main__":
    main()
