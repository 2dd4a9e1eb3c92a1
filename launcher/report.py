"""Load reports: a markdown summary and PNG plots of one run, either a locust
run (the CSV files of `locust --headless --csv PREFIX`) or a
`python -m bench.rerank_bench` JSON.

  reranker report PREFIX|PREFIX_stats.csv|RUN.json|DIR [--out DIR]

Locust, as its 2.x `locust/stats.py` writes them:
- `PREFIX_stats.csv`: one row per endpoint plus `Aggregated`, with "Request
  Count", "Failure Count", "Median/Average/Min/Max Response Time",
  "Requests/s", "Failures/s" and one column per percentile ("50%", "99%"...).
- `PREFIX_stats_history.csv`: one row per second with "Timestamp", "User
  Count", "Requests/s" (a sliding window), the percentile columns, and the
  cumulative "Total Request Count", "Total Failure Count" and "Total Average
  Response Time". Its percentiles are cumulative since the start unless the
  run used `--csv-full-history`, which also adds per-endpoint rows and makes
  them windowed; the report says which it read.

Per user count, throughput and mean latency come from the differences of the
cumulative totals between the end of the previous level and the end of this
one, so they are exact whatever locust's windows; p50/p99 per level are
locust's own (the median of the level's windowed values, or the cumulative
value at the level's end).

Plots need matplotlib; without it the markdown is still written and the
report says why there are no plots.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from itertools import groupby
from pathlib import Path
from typing import Callable

WAY_NAMES = {"a": "(a) seed-style baseline", "b": "(b) engine direct", "c": "(c) gateway + Triton",
             "d": "(d) libraries, no server"}
GOAL_RATIO = 0.9
"""Issue 6's goal: gateway + Triton cost at most 10% of the engine's direct throughput at saturation."""
NO_MATPLOTLIB = "matplotlib is not installed, so no PNG plots were written (pip install matplotlib)"


# ---------------------------------------------------------------------------------------------
# Finding the run


def detect(run: Path) -> tuple[str, Path]:
    """("bench", json file) or ("locust", CSV prefix) for a file, a prefix or a folder."""
    if run.is_dir():
        found = [("bench", p) for p in sorted(run.glob("*.json")) if _is_bench_json(p)]
        found += [("locust", Path(str(p)[: -len("_stats_history.csv")]))
                  for p in sorted(run.glob("*_stats_history.csv"))]
        found += [("locust", Path(str(p)[: -len("_stats.csv")])) for p in sorted(run.glob("*_stats.csv"))
                  if not Path(str(p)[: -len("_stats.csv")] + "_stats_history.csv").exists()]
        if len(found) != 1:
            names = ", ".join(str(p) for _, p in found) or "none"
            raise SystemExit(f"{run} must hold exactly one run (a rerank_bench JSON or locust CSVs); found: {names}")
        return found[0]
    if run.suffix == ".json":
        if not _is_bench_json(run):
            raise SystemExit(f"{run} is not a rerank_bench JSON (no 'schema': 'rerank_bench/...')")
        return "bench", run
    for suffix in ("_stats_history.csv", "_stats.csv"):
        if run.name.endswith(suffix):
            return "locust", run.with_name(run.name[: -len(suffix)])
    if Path(f"{run}_stats.csv").exists() or Path(f"{run}_stats_history.csv").exists():
        return "locust", run
    raise SystemExit(f"{run}: no rerank_bench JSON, locust CSV, or PREFIX with PREFIX_stats.csv there")


def _is_bench_json(path: Path) -> bool:
    try:
        return str(json.loads(path.read_text()).get("schema", "")).startswith("rerank_bench/")
    except (ValueError, AttributeError, OSError):
        return False


def render(run: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the report of `run` into `out_dir` (default: beside the run); the files written."""
    kind, path = detect(run)
    out_dir = out_dir or path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    if kind == "bench":
        return render_bench(json.loads(path.read_text()), out_dir, path.stem)
    return render_locust(path, out_dir, f"{path.name}_report")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_report(markdown_path: Path, markdown: Callable[[list[Path], str | None], str],
                  plots: list[Path] | None) -> list[Path]:
    """Write the markdown (a function of the plots written, or of the note why there are none)."""
    markdown_path.write_text(markdown(plots or [], None if plots is not None else NO_MATPLOTLIB))
    if plots is None:
        print(NO_MATPLOTLIB)
    return [markdown_path, *(plots or [])]


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _fixed(value, pattern: str) -> str | None:
    return None if value is None else pattern.format(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return lines


# ---------------------------------------------------------------------------------------------
# rerank_bench JSON


def comparisons(model: dict) -> dict:
    """(c)/(d), (c)/(b) and (b)/(a) at the highest concurrency both ways measured, and (c)'s single-pair p50."""
    ways = model.get("ways", {})

    def levels(way: str) -> dict[int, dict]:
        return {level["concurrency"]: level for level in ways.get(way, {}).get("levels", [])}

    out: dict = {}
    for top_way, bottom_way in (("c", "d"), ("c", "b"), ("b", "a")):
        top, bottom = levels(top_way), levels(bottom_way)
        common = sorted(set(top) & set(bottom))
        if not common:
            continue
        at = common[-1]
        t, b = top[at], bottom[at]
        ratio = t["pairs_per_s"] / b["pairs_per_s"] if b["pairs_per_s"] else None
        entry = {
            "concurrency": at,
            "pairs_per_s_ratio": None if ratio is None else round(ratio, 3),
            "p50_ratio": _ratio(t.get("p50_ms"), b.get("p50_ms")),
            "p99_ratio": _ratio(t.get("p99_ms"), b.get("p99_ms")),
        }
        if (top_way, bottom_way) == ("c", "b") and ratio is not None:
            entry["gateway_triton_cost_pct"] = round((1 - ratio) * 100, 1)
            entry["meets_goal"] = ratio >= GOAL_RATIO
        out[f"{top_way}_over_{bottom_way}"] = entry
    single = ways.get("c", {}).get("single_pair")
    out["c_single_pair_p50_ms"] = single.get("p50_ms") if single else None
    return out


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def bench_markdown(data: dict, plots: list[Path], plot_note: str | None = None) -> str:
    settings = data.get("settings", {})
    env = data.get("environment", {})
    lines = ["# Rerank benchmark", ""]
    lines += [
        f"- weights: {data.get('weights', 'see each model')}",
        (f"- device: {env.get('device', 'n/a')}; torch {env.get('torch', 'n/a')}, "
         f"transformers {env.get('transformers', 'n/a')}"),
        (f"- workload: {settings.get('workload', 'n/a')} per request; closed loop at concurrency "
         f"{', '.join(str(c) for c in settings.get('concurrency', []))}; {settings.get('level_rule', '')}"),
        f"- started {data.get('started', 'n/a')}",
        "",
    ]
    for way, text in data.get("ways", {}).items():
        lines.append(f"- **{WAY_NAMES.get(way, way)}**: {text}")
    lines.append("")

    headline = []
    for model in data.get("models", []):
        comp = model.get("comparisons") or comparisons(model)
        cb, ba, cd = comp.get("c_over_b", {}), comp.get("b_over_a", {}), comp.get("c_over_d", {})
        goal = None if "meets_goal" not in cb else ("met" if cb["meets_goal"] else "**missed**")
        c_result = model.get("ways", {}).get("c", {})
        c_failed = sum(lv["failures"] for lv in c_result.get("levels", [])) if "levels" in c_result else None
        headline.append([
            model["model"], _fixed(cd.get("pairs_per_s_ratio"), "{:.2f}x"), cb.get("concurrency"),
            _fixed(cb.get("pairs_per_s_ratio"), "{:.3f}"),
            _fixed(cb.get("gateway_triton_cost_pct"), "{:.1f}%"), goal, _fixed(cb.get("p99_ratio"), "{:.3f}"),
            comp.get("c_single_pair_p50_ms"), _fixed(ba.get("pairs_per_s_ratio"), "{:.2f}x"), c_failed,
        ])
    lines += ["## Headline", ""]
    lines += _table(["model", "(c)/(d) pairs/s: server over libraries", "at concurrency", "(c)/(b) pairs/s",
                     "gateway + Triton cost", "goal: cost <= 10%",
                     "(c)/(b) p99", "(c) single-pair p50 ms", "(b)/(a) pairs/s", "(c) failed requests"], headline)
    lines.append("")
    if plots:
        lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    elif plot_note:
        lines += [f"_{plot_note}_", ""]

    for model in data.get("models", []):
        lines += [f"## {model['model']}", "", f"weights: {model.get('weights', 'n/a')}", ""]
        ways = model.get("ways", {})
        summary = []
        for way, result in ways.items():
            single = result.get("single_pair") or {}
            summary.append([WAY_NAMES.get(way, way), result.get("dtype", "n/a"), result.get("load_s"),
                            result.get("peak_gpu_mib"), single.get("p50_ms"), (result.get("error") or "")[:160]])
        lines += _table(["way", "dtype", "load s", "peak GPU MiB", "single-pair p50 ms", "error"], summary) + [""]
        rows = []
        for way, result in ways.items():
            for level in result.get("levels", []):
                rows.append([WAY_NAMES.get(way, way), level["concurrency"], level["requests"], level["failures"],
                             level["pairs_per_s"], level["tokens_per_s"], level["p50_ms"], level["p90_ms"],
                             level["p99_ms"]])
        if rows:
            lines += _table(["way", "concurrency", "requests", "failures", "pairs/s", "tokens/s", "p50 ms",
                             "p90 ms", "p99 ms"], rows) + [""]
        inside = [[WAY_NAMES.get(way, way), level["concurrency"], t["batches"], t["mean_batch_pairs"],
                   t["wall_ms_per_batch"], t.get("execute_ms_per_batch"), t.get("engine_ms_per_batch"),
                   _fixed(t.get("engine_busy"), "{:.1%}"), t.get("gc_ms_per_batch")]
                  for way, result in ways.items() for level in result.get("levels", [])
                  if (t := level.get("triton") or level.get("engine"))]
        if inside:
            lines += ["Per batch: (c) from Triton's statistics (`execute` is the python backend's) and the engine's "
                      "compute histogram; (b) from its batcher. Engine busy: summed engine time over the level's "
                      "wall time. GC: the model instance's process in Python's garbage collector.", ""]
            lines += _table(["way", "concurrency", "batches", "pairs/batch", "wall ms", "execute ms", "engine ms",
                             "engine busy", "GC ms"], inside) + [""]
    return "\n".join(lines)


def _way_series(model: dict, way: str, key: str) -> tuple[list[int], list[float]]:
    levels = [lv for lv in model["ways"].get(way, {}).get("levels", []) if lv.get(key) is not None]
    return [lv["concurrency"] for lv in levels], [lv[key] for lv in levels]


def bench_plots(data: dict, out_dir: Path, stem: str) -> list[Path] | None:
    plt = _pyplot()
    if plt is None:
        return None
    models = [m for m in data.get("models", []) if any(w.get("levels") for w in m.get("ways", {}).values())]
    if not models:
        return []
    written = []
    columns = (("pairs_per_s", "pairs/s"), ("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"))
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 4 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for ax, (key, label) in zip(row, columns):
            for way in model["ways"]:
                xs, ys = _way_series(model, way, key)
                if xs:
                    ax.plot(xs, ys, marker="o", label=WAY_NAMES.get(way, way))
            ax.set_xscale("log", base=2)
            ticks = sorted({c for way in model["ways"] for c in _way_series(model, way, key)[0]})
            ax.set_xticks(ticks, [str(c) for c in ticks])
            ax.minorticks_off()
            if key != "pairs_per_s":
                ax.set_yscale("log")  # the ways differ by orders of magnitude in latency
            ax.set_xlabel("concurrency (clients)")
            ax.set_ylabel(label)
            ax.set_title(f"{model['model']}: {label}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"rerank_bench: throughput and latency against concurrency ({data.get('weights', '')})", fontsize=10)
    written.append(_save(plt, fig, out_dir / f"{stem}.png"))

    fig, axes = plt.subplots(len(models), 2, figsize=(14, 4 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for way, result in model["ways"].items():
            ts, throughput, p50, p99, offset = [], [], [], [], 0.0
            for level in result.get("levels", []):
                for point in level.get("timeline", []):
                    ts.append(offset + point["t_s"])
                    throughput.append(point["pairs_per_s"])
                    p50.append(point["p50_ms"])
                    p99.append(point["p99_ms"])
                offset += level.get("elapsed_s", 0.0)
            if ts:
                name = WAY_NAMES.get(way, way)
                row[0].plot(ts, throughput, label=name)
                row[1].plot(ts, p50, label=f"{name} p50")
                row[1].plot(ts, p99, linestyle="--", label=f"{name} p99")
        for ax, label in zip(row, ("pairs/s", "latency (ms)")):
            ax.set_xlabel("time (s, levels of rising concurrency back to back)")
            ax.set_ylabel(label)
            ax.set_title(f"{model['model']}: {label} over time")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    written.append(_save(plt, fig, out_dir / f"{stem}_time.png"))
    return written


def render_bench(data: dict, out_dir: Path, stem: str) -> list[Path]:
    plots = bench_plots(data, out_dir, stem)
    return _write_report(out_dir / f"{stem}.md", lambda shown, note: bench_markdown(data, shown, note), plots)


# ---------------------------------------------------------------------------------------------
# locust CSV


def _number(value: str | None) -> float | None:
    if value in (None, "", "N/A"):
        return None
    return float(value)


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


TIMING = "timing"
"""locustfiles/common.py's request type for the timing headers: rows of their own, which locust's
`Aggregated` counts as requests too."""


def request_rows(history: list[dict]) -> list[dict]:
    """One row per timestamp for the real requests, in time order.

    Locust's `Aggregated` row also counts the timing-header rows (three per
    request). Where the endpoint rows are there (--csv-full-history), the
    request rows are summed instead: counts and rates add up, the mean is
    weighted by count, and a percentile is the highest of the endpoints'.
    """
    if not any(row["Type"] == TIMING for row in history):
        return sorted((r for r in history if r["Name"] == "Aggregated"), key=lambda r: int(r["Timestamp"]))
    rows = []
    for timestamp, group in groupby(sorted(history, key=lambda r: int(r["Timestamp"])), key=lambda r: r["Timestamp"]):
        group = list(group)
        endpoints = [r for r in group if r["Name"] != "Aggregated" and r["Type"] != TIMING]
        row = dict(next(r for r in group if r["Name"] == "Aggregated"))
        if endpoints:
            count = sum(int(r["Total Request Count"]) for r in endpoints)
            row["Total Request Count"] = str(count)
            row["Total Failure Count"] = str(sum(int(r["Total Failure Count"]) for r in endpoints))
            row["Total Average Response Time"] = str(sum(
                float(r["Total Average Response Time"]) * int(r["Total Request Count"]) for r in endpoints
            ) / count if count else 0.0)
            for column in ("Requests/s", "Failures/s"):
                row[column] = str(sum(_number(r[column]) or 0.0 for r in endpoints))
            for column in [c for c in row if c.endswith("%")]:
                values = [v for v in (_number(r[column]) for r in endpoints) if v is not None]
                row[column] = str(max(values)) if values else "N/A"
        else:  # no request yet at this timestamp
            for column in ("Total Request Count", "Total Failure Count"):
                row[column] = "0"
        rows.append(row)
    return rows


def locust_levels(history: list[dict]) -> tuple[list[dict], bool]:
    """Per run of rows at one user count: (levels, percentiles_are_windowed)."""
    windowed = any(row["Name"] != "Aggregated" for row in history)  # --csv-full-history writes endpoint rows
    rows = request_rows(history)
    levels, previous = [], None
    for users, group in groupby(rows, key=lambda r: int(r["User Count"])):
        group = list(group)
        first, last = group[0], group[-1]
        start = previous or first
        elapsed = int(last["Timestamp"]) - int(start["Timestamp"])
        count = int(last["Total Request Count"]) - int(start["Total Request Count"])
        failures = int(last["Total Failure Count"]) - int(start["Total Failure Count"])
        latency_sum = (float(last["Total Average Response Time"]) * int(last["Total Request Count"])
                       - float(start["Total Average Response Time"]) * int(start["Total Request Count"]))


        levels.append({
            "users": users,
            "rows": len(group),
            "held_s": int(last["Timestamp"]) - int(first["Timestamp"]) + 1,
            "requests": count,
            "failures": failures,
            "requests_per_s": count / elapsed if elapsed > 0 else None,
            "mean_ms": latency_sum / count if count > 0 else None,
            "p50_ms": _level_percentile(group, "50%", windowed),
            "p99_ms": _level_percentile(group, "99%", windowed),
        })
        previous = last
    return [level for level in levels if level["users"] > 0], windowed


def _level_percentile(group: list[dict], column: str, windowed: bool) -> float | None:
    if column not in group[-1]:
        return None  # a run with other --percentiles
    if windowed:
        values = [v for v in (_number(r[column]) for r in group) if v is not None]
        return statistics.median(values) if values else None
    return _number(group[-1][column])


def locust_markdown(prefix: Path, stats: list[dict], history: list[dict], plots: list[Path],
                    plot_note: str | None = None) -> str:
    levels, windowed = locust_levels(history)
    lines = [f"# Load report: locust run `{prefix.name}`", ""]
    lines += [(f"Read: `{prefix.name}_stats.csv` ({len(stats)} rows), `{prefix.name}_stats_history.csv` "
               f"({len(history)} rows)."), ""]
    if plots:
        lines += [f"![{p.stem}]({p.name})" for p in plots] + [""]
    elif plot_note:
        lines += [f"_{plot_note}_", ""]
    if stats:
        rows = []
        for row in stats:
            requests = int(row["Request Count"])
            failures = int(row["Failure Count"])
            rows.append([(row["Type"] + " " + row["Name"]).strip(), requests, failures,
                         f"{100 * failures / requests:.2f}%" if requests else "n/a", _number(row["Requests/s"]),
                         _number(row["Median Response Time"]), _number(row["Average Response Time"]),
                         _number(row.get("90%")), _number(row.get("99%")), _number(row["Max Response Time"])])
        lines += ["## Totals", ""]
        lines += _table(["endpoint", "requests", "failures", "failed", "req/s", "median ms", "mean ms", "p90 ms",
                         "p99 ms", "max ms"], rows) + [""]
    if levels:
        kind = ("windowed (the run used --csv-full-history): the median of the level's values" if windowed else
                "cumulative since the start (no --csv-full-history): the value at the level's end")
        lines += ["## By user count", "",
                  ("req/s and mean latency are exact, from the cumulative totals at the ends of the levels; "
                   f"p50 and p99 are locust's, {kind}."), ""]
        if not windowed and any(row["Type"] == TIMING for row in stats):
            lines += ["_Without --csv-full-history the history holds only locust's Aggregated rows, which count "
                      "the timing-header rows as requests too: these levels overstate req/s._", ""]
        lines += _table(["users", "held s", "requests", "failures", "req/s", "mean ms", "p50 ms", "p99 ms"],
                        [[lv["users"], lv["held_s"], lv["requests"], lv["failures"], lv["requests_per_s"],
                          lv["mean_ms"], lv["p50_ms"], lv["p99_ms"]] for lv in levels]) + [""]
    return "\n".join(lines)


def locust_plots(prefix: Path, history: list[dict], out_dir: Path, stem: str) -> list[Path] | None:
    plt = _pyplot()
    if plt is None:
        return None
    rows = request_rows(history)
    if not rows:
        return []
    levels, windowed = locust_levels(history)
    written = []
    # A level shorter than 2 s is a ramp step: too few rows to say anything about its user count.
    held = [lv for lv in levels if lv["rows"] >= 2] or levels
    if held:
        fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
        users = [lv["users"] for lv in held]
        left.plot(users, [lv["requests_per_s"] for lv in held], marker="o")
        left.set_xlabel("users")
        left.set_ylabel("requests/s")
        left.set_title("throughput against users")
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("mean_ms", "mean")):
            right.plot(users, [lv[key] for lv in held], marker="o", label=label)
        right.set_xlabel("users")
        right.set_ylabel("latency (ms)")
        right.set_title("latency against users" + ("" if windowed else " (p50/p99 cumulative)"))
        for ax in (left, right):
            ax.grid(True, alpha=0.3)
        right.legend()
        fig.suptitle(f"locust run {prefix.name}", fontsize=10)
        written.append(_save(plt, fig, out_dir / f"{stem}_users.png"))

    t0 = int(rows[0]["Timestamp"])
    ts = [int(r["Timestamp"]) - t0 for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    top.plot(ts, [_number(r["Requests/s"]) for r in rows], label="requests/s (locust's window)")
    # Locust's own rate lags behind by its window; the change of the cumulative count does not.
    exact: list[float | None] = [None]
    for a, b in zip(rows, rows[1:]):
        seconds = int(b["Timestamp"]) - int(a["Timestamp"])
        exact.append((int(b["Total Request Count"]) - int(a["Total Request Count"])) / seconds if seconds else None)
    top.plot(ts, exact, label="requests/s (from the totals)", linestyle="--")
    top.plot(ts, [_number(r["Failures/s"]) for r in rows], label="failures/s", color="tab:red")
    top.set_ylabel("per second")
    twin = top.twinx()
    twin.step(ts, [int(r["User Count"]) for r in rows], where="post", color="tab:gray", alpha=0.6, label="users")
    twin.set_ylabel("users")
    top.legend(loc="upper left")
    twin.legend(loc="upper right")
    for column in ("50%", "99%"):
        if column in rows[0]:
            bottom.plot(ts, [_number(r[column]) for r in rows], label=f"p{column[:-1]}")
    bottom.set_ylabel("latency (ms)" + ("" if windowed else ", cumulative"))
    bottom.set_xlabel("time since start (s)")
    bottom.legend()
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"locust run {prefix.name} over time", fontsize=10)
    written.append(_save(plt, fig, out_dir / f"{stem}_time.png"))
    return written


def render_locust(prefix: Path, out_dir: Path, stem: str) -> list[Path]:
    stats = _read_csv(Path(f"{prefix}_stats.csv"))
    history = _read_csv(Path(f"{prefix}_stats_history.csv"))
    if not stats and not history:
        raise SystemExit(f"no locust CSV at {prefix}_stats.csv or {prefix}_stats_history.csv")
    plots = locust_plots(prefix, history, out_dir, stem)
    return _write_report(out_dir / f"{stem}.md",
                         lambda shown, note: locust_markdown(prefix, stats, history, shown, note), plots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reranker report", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args.run, args.out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="locust CSV prefix (or its _stats.csv), a rerank_bench JSON, or a "
                                               "folder holding one run")
    parser.add_argument("--out", type=Path, help="folder for the report (default: beside the run)")


def run(run_path: Path, out: Path | None) -> int:
    for path in render(run_path, out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
