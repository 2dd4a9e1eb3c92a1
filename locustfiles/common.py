"""Shared pieces of the locust scenarios: command-line options, the request
budget that stops a run after N requests, the gateway's timing headers
reported as custom metrics, corpus loading, and response checks that mark a
request failed when its JSON is not the shape the API promises.

Options every scenario gets (also settable as LOCUST_* environment variables
or in a locust config file):

  --max-requests N   stop the run once N scoring requests have completed
                     (/rerank, /v1/rerank; switch calls are not counted;
                     0: no limit; -t/--run-time still applies)
  --allow-429        report a 429 (the gateway's in-flight bound) as a success
                     under its own name "<name> [429]" instead of a failure

Scenarios that read a corpus call `use_corpus()`, which adds:

  --corpus PATH      JSONL file, or a folder of them, with one
                     {"query": str, "documents": [str, ...]} per line
                     (default: ../shared/data/eval/, the project's eval sets)
  --documents N      documents per /v1/rerank request (default 20)

The timing headers (x-total-time, x-queue-time, x-inference-time, in ms) of
every 200 scoring answer are fired as requests of type "timing" (the approach
of TEI's load tests), so locust's tables show their count,
median, percentiles and max next to the HTTP rows. They are not HTTP
requests: read the HTTP rows for throughput, and note that the "Aggregated"
row counts both.

--max-requests counts within one locust process; it is meant for local
(non-distributed) runs, which is how these scenarios are written.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.exception import StopUser
from locust.stats import CSV_STATS_INTERVAL_SEC

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "data" / "eval"
TIMING = "timing"
TIMING_HEADERS = ("x-total-time", "x-queue-time", "x-inference-time")


def at_least(low: int):
    """An argparse type: an integer no lower than `low`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(f"must be at least {low}")
        return value

    parse.__name__ = f"integer >= {low}"  # argparse names the type in its error message
    return parse


@events.init_command_line_parser.add_listener
def _common_arguments(parser) -> None:
    parser.add_argument("--max-requests", type=at_least(0), default=0, env_var="LOCUST_MAX_REQUESTS",
                        help="Stop once this many scoring requests have completed (switches not counted; 0: no limit).")
    parser.add_argument("--allow-429", action="store_true", default=False, env_var="LOCUST_ALLOW_429",
                        help="Count a 429 (gateway overloaded) as a success, reported under '<name> [429]'.")


def _corpus_arguments(parser) -> None:
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), env_var="LOCUST_CORPUS",
                        help="JSONL file, or folder of *.jsonl, with {query, documents} per line.")
    parser.add_argument("--documents", type=at_least(1), default=20, env_var="LOCUST_DOCUMENTS",
                        help="Documents per /v1/rerank request.")


# ---------------------------------------------------------------- request budget


class RequestBudget:
    """Hands out at most `limit` tickets; when the last ticket's request has
    completed, quits the runner, which prints the summary and writes the CSVs.

    A ticket is taken *before* the request is sent, so exactly `limit`
    requests are made (counting completions alone would overshoot by up to
    one request per user). Greenlets switch only at I/O, so plain counters
    are safe.
    """

    def __init__(self) -> None:
        self.environment = None
        self.limit = 0
        self.started = 0
        self.finished = 0

    def setup(self, environment) -> None:
        self.environment = environment
        self.limit = getattr(environment.parsed_options, "max_requests", 0)
        self.started = self.finished = 0

    def take(self) -> None:
        """Take a ticket, or stop the calling user when none are left."""
        if self.limit and self.started >= self.limit:
            raise StopUser()
        self.started += 1

    def done(self) -> None:
        self.finished += 1
        if self.limit and self.finished == self.limit:
            end_run(self.environment)


def end_run(environment) -> None:
    """Quit the run as -t does: users stop, the summary prints, the CSVs are closed."""
    # Its own greenlet, as quit() kills every user greenlet, the caller's included; and a moment
    # later, as locust rewrites --csv files every CSV_STATS_INTERVAL_SEC but not at exit, which
    # would leave the last requests out of *_stats.csv.
    gevent.spawn_later(CSV_STATS_INTERVAL_SEC + 0.5, environment.runner.quit)


budget = RequestBudget()


@events.test_start.add_listener
def _start_budget(environment, **_kwargs) -> None:
    budget.setup(environment)


# ---------------------------------------------------------------- timing headers


def record_timings(environment, response) -> None:
    """Fire one "timing" event per timing header the response carries."""
    headers = getattr(response, "headers", None)
    if not headers:
        return  # connection errors have no headers
    for header in TIMING_HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        environment.events.request.fire(
            request_type=TIMING, name=header, response_time=float(value), response_length=0,
            exception=None, context={},
        )


# ---------------------------------------------------------------- corpus


class Corpus:
    """Queries with their candidate documents, plus one pool of every document,
    used to fill requests that ask for more documents than a query has."""

    def __init__(self, rows: list[Any]) -> None:
        rows = [r for r in rows if isinstance(r, dict)]
        self.rows = [r for r in rows if isinstance(r.get("query"), str) and r["query"].strip()]
        self.pool = [d for r in rows for d in r.get("documents", []) if isinstance(d, str) and d.strip()]
        if not self.rows or not self.pool:
            raise ValueError("the corpus has no usable query or no document")

    @classmethod
    def load(cls, path: str | Path) -> "Corpus":
        path = Path(path)
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"no JSONL corpus at {path} (set --corpus or LOCUST_CORPUS)")
        rows = []
        for f in files:
            # Not splitlines(): it also splits at U+2028 and U+0085, which JSON strings may hold raw.
            for number, line in enumerate(f.read_text(encoding="utf-8").split("\n"), 1):
                try:
                    rows += [json.loads(line)] if line.strip() else []
                except ValueError as exc:
                    raise ValueError(f"{f}:{number}: {exc}") from None
        return cls(rows)

    def sample(self, rng: random.Random, count: int) -> tuple[str, list[str]]:
        """One query and `count` documents: its own candidates first, shuffled, then others from the pool."""
        row = rng.choice(self.rows)
        own = [d for d in row.get("documents", []) if isinstance(d, str) and d.strip()]
        documents = rng.sample(own, min(count, len(own)))
        while len(documents) < count:
            documents.append(rng.choice(self.pool))
        return row["query"], documents


_corpus: Corpus | None = None


def corpus() -> Corpus:
    """The corpus named by --corpus, read at start-up."""
    if _corpus is None:
        raise RuntimeError("no corpus: the locustfile must call use_corpus()")
    return _corpus


def _load_corpus(environment, **_kwargs) -> None:
    global _corpus
    try:
        _corpus = Corpus.load(environment.parsed_options.corpus)
    except (OSError, ValueError) as exc:
        # At start-up, before any user: they would otherwise fail one by one while the run idles to -t.
        raise SystemExit(f"cannot read the corpus: {exc}") from None


def use_corpus() -> None:
    """For scenarios that draw queries and documents from a corpus: adds --corpus and
    --documents, and reads the corpus once at start-up (exiting if it cannot)."""
    events.init_command_line_parser.add_listener(_corpus_arguments)
    events.init.add_listener(_load_corpus)


# ---------------------------------------------------------------- response checks


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pair_problem(body: Any) -> str | None:
    """What is wrong with a /rerank pair answer, or None."""
    if not isinstance(body, dict) or not _finite(body.get("score")):
        return "no finite 'score'"
    # [0, 1] for cross-encoders, [-1, 1] for minilm's cosine.
    if not -1.0 <= body["score"] <= 1.0:
        return f"score {body['score']} outside [-1, 1]"
    return None


def rerank_problem(body: Any, documents: int) -> str | None:
    """What is wrong with a /v1/rerank answer to `documents` documents (no top_n), or None."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "no 'model'"
    results = body.get("results")
    if not isinstance(results, list) or len(results) != documents:
        return f"expected {documents} results, got {len(results) if isinstance(results, list) else results!r}"
    if not all(isinstance(r, dict) and isinstance(r.get("index"), int) and _finite(r.get("relevance_score"))
               for r in results):
        return "a result lacks an int 'index' or a finite 'relevance_score'"
    if sorted(r["index"] for r in results) != list(range(documents)):
        return "result indices are not a permutation of the documents"
    scores = [r["relevance_score"] for r in results]
    if any(a < b for a, b in zip(scores, scores[1:])):
        return "results are not sorted by relevance_score, highest first"
    usage = body.get("usage")
    if not isinstance(usage, dict) or not isinstance(usage.get("total_tokens"), int) or usage["total_tokens"] <= 0:
        return "no positive usage.total_tokens"
    return None


def switch_problem(body: Any) -> str | None:
    """What is wrong with a /switch_model answer, or None."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return "no 'model'"
    if not _finite(body.get("load_time_s")):
        return "no 'load_time_s'"
    return None


def check(response, problem_of, environment, name_by_model: bool = False, timings: bool = True) -> Any:
    """Mark a `catch_response=True` response as success or failure; return its JSON body on success.

    name_by_model: report a success under "<name> [<model>]", the model the
    answer names, so the table shows how much traffic each model served.
    timings: record the timing headers of a 200; off for control calls (a
    switch's x-total-time is a model load, not a scoring latency).

    A 429 is a failure unless --allow-429 is given: the gateway's in-flight bound
    (RERANKER_MAX_CONCURRENT_REQUESTS, 1024 by default) is far above these
    scenarios' user counts, so a 429 here means the gateway refused load it
    should carry. With --allow-429 it is reported as a success under
    "<name> [429]" so its near-zero latency stays out of the real rows.
    """
    if timings and response.status_code == 200:
        # Answered requests only: a 429's x-total-time (a refusal in microseconds) would drag the row down.
        record_timings(environment, response)
    if response.status_code == 429 and environment.parsed_options.allow_429:
        response.request_meta["name"] = f"{response.request_meta['name']} [429]"
        response.success()
        return None
    if response.status_code != 200:
        # Status 0: no answer (connection refused, timeout); the error says which.
        response.failure(f"{response.status_code}: {(response.text or repr(response.error))[:200]}")
        return None
    try:
        body = response.json()
    except ValueError:
        response.failure(f"not JSON: {(response.text or '')[:200]}")
        return None
    problem = problem_of(body)
    if problem:
        response.failure(f"{problem}: {response.text[:200]}")
        return None
    if name_by_model:
        response.request_meta["name"] = f"{response.request_meta['name']} [{body['model']}]"
    response.success()
    return body
