"""A copy of the model repository with every model's dynamic batching changed,
to measure a batching choice side by side with the shipped one in one run.

  python -m bench.repo_variant --out /tmp/repo-plain --no-priority --max-queue-delay-us 0

`--no-priority` drops the priority levels and queue policies: Triton 2.51's
dynamic batcher then builds the next batch ahead ("prefetching"), which it
does for no model that has either (README, Where the time goes).
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def rewrite(text: str, no_priority: bool, max_queue_delay_us: int | None) -> str:
    if no_priority:
        text = re.sub(r"\n\s*priority_levels: \d+", "", text)
        text = re.sub(r"\n\s*default_priority_level: \d+", "", text)
        text = re.sub(r"\n\s*default_queue_policy \{[^}]*\}", "", text)
        text = re.sub(r"\n\s*priority_queue_policy \[.*?\n\s*\]", "", text, flags=re.S)
    if max_queue_delay_us is not None:
        text = re.sub(r"max_queue_delay_microseconds: \d+", f"max_queue_delay_microseconds: {max_queue_delay_us}",
                      text)
    return text


def make(out: Path, no_priority: bool, max_queue_delay_us: int | None,
         source: Path = REPO_ROOT / "model_repository") -> Path:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, symlinks=True)  # each 1/model.py stays a link to the copy's reranker_model.py
    for config in [*out.glob("*/config.pbtxt"), *out.glob("*/configs/*.pbtxt")]:
        config.write_text(rewrite(config.read_text(), no_priority, max_queue_delay_us))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-priority", action="store_true")
    parser.add_argument("--max-queue-delay-us", type=int)
    args = parser.parse_args(argv)
    print(make(args.out, args.no_priority, args.max_queue_delay_us))


if __name__ == "__main__":
    main()
