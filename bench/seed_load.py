"""The seed's own load test at GPU speed: many clients posting single pairs to
`POST /rerank`, closed loop, from several load-generator processes, with the
generator's own CPU use reported so that it is never the unseen limit.

Levels (`--level NAME:CLIENTS`, repeatable):
  seed:C    C clients, each posting the seed README's pair to /rerank and
            waiting for the answer before the next (the seed's test_load.py)
  mixed:C   C clients posting 1 query x 10 documents to /v1/rerank
  c1        one client, seed pairs: the interactive latency

Each level runs `--duration` seconds after `--warmup` seconds that are not
counted. With `--check-generator` every level runs a second time with twice
the generator processes: if the server's figure moves, the generator was the
limit. With `--switch MODEL,MODEL...` one more level runs 200 seed clients
while /switch_model goes through the listed models one after another, and
counts the failed requests across the switches.

  python -m bench.seed_load --url http://127.0.0.1:8000 --level seed:200 --level mixed:200
  python -m bench.seed_load --serve bge --models-dir /tmp/models --workers 8 --processes 4 \\
      --level c1 --level seed:200 --level seed:1000 --level mixed:200 --check-generator \\
      --switch qwen3-reranker-8b-fp8,bge --out bench_results/seed-load

The client is a plain asyncio HTTP/1.1 keep-alive protocol, one connection
per client (about 10 us of CPU per request, a tenth of httpx's), so that a few
processes can drive ~10,000 requests/s. With `--serve`, the CPU time of every
process of the stack (gateway workers, tritonserver, the model stubs) is read
from /proc around each level, and the GPU's utilisation sampled by nvidia-smi.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SEED_PAIR = {"query": "今天天气如何？", "document": "今天晴天适合外出游玩"}  # the seed README's payload
MIXED_DOCUMENTS = [
    "今天晴天适合外出游玩", "明天有雨，记得带伞", "The weather today is sunny and warm.",
    "北京今天的空气质量良好", "Bring an umbrella: showers are expected this afternoon.",
    "天气预报说周末会降温", "A cold front moves in on Sunday.", "今天不适合户外运动",
    "The museum is open every day except Monday.", "晴转多云，最高气温二十五度",
]
CONNECT_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class LevelSpec:
    name: str
    path: str
    body: bytes
    clients: int
    documents: int

    @classmethod
    def parse(cls, text: str) -> "LevelSpec":
        kind, _, clients = text.partition(":")
        if kind == "c1":
            return cls("c1", "/rerank", _json(SEED_PAIR), 1, 1)
        if kind not in ("seed", "mixed") or not clients.isdigit() or int(clients) < 1:
            raise argparse.ArgumentTypeError(f"level {text!r}: seed:CLIENTS, mixed:CLIENTS or c1")
        if kind == "seed":
            return cls(f"seed-{clients}", "/rerank", _json(SEED_PAIR), int(clients), 1)
        body = {"query": SEED_PAIR["query"], "documents": MIXED_DOCUMENTS, "return_documents": False}
        return cls(f"mixed-{clients}", "/v1/rerank", _json(body), int(clients), len(MIXED_DOCUMENTS))


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


# --- the client: one process's share of a level -----------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `request()` sends prepared bytes and returns (status, headers, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionResetError("the server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        status = int(head[0].split(" ", 2)[1])
        self.waiter.set_result((status, headers, body))

    async def request(self, payload: bytes) -> tuple[int, dict, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return await self.waiter


def _check(spec_documents: int, body: bytes) -> str | None:
    """Why a 200's body is wrong, or None."""
    answer = json.loads(body)
    if spec_documents == 1 and "score" in answer:
        return None if math.isfinite(answer["score"]) else "non-finite score"
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != spec_documents:
        return f"{len(results) if isinstance(results, list) else 'no'} results for {spec_documents} documents"
    return None


async def _clients(host: str, port: int, spec: LevelSpec, clients: int, start_at: float, end) -> dict:
    """`end.value`: when the level ends (the parent may bring it forward)."""
    loop = asyncio.get_running_loop()
    head = (f"POST {spec.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(spec.body)}\r\n\r\n").encode()
    payload = head + spec.body
    latencies: list[float] = []
    outcomes: Counter = Counter()
    late = 0

    async def connect() -> _Connection:
        _, protocol = await asyncio.wait_for(loop.create_connection(_Connection, host, port), CONNECT_TIMEOUT_S)
        return protocol

    async def client(connection: _Connection) -> None:
        nonlocal late
        await asyncio.sleep(max(start_at - time.time(), 0))
        while (begun := time.time()) < end.value:
            try:
                if connection.closed:
                    connection = await connect()
                status, headers, body = await asyncio.wait_for(connection.request(payload), REQUEST_TIMEOUT_S)
                problem = _check(spec.documents, body) if status == 200 else None
            except Exception as exc:  # a failed request is data: counted by type, then the client goes on
                status, headers, problem = None, {}, type(exc).__name__
                if not connection.closed and connection.transport is not None:
                    connection.transport.close()
                connection.closed = True
            done = time.time()
            end_at = end.value
            if done > end_at:
                late += 1  # answered after the level's end: not counted in its rate, still checked
            if status == 200 and problem is None:
                outcome = "ok"
            elif status == 429:
                outcome = "429" if "retry-after" in headers else "429 without Retry-After"
            elif status is not None:
                outcome = f"HTTP {status}" if problem is None else f"HTTP 200: {problem}"
            else:
                outcome = problem
            if begun >= start_at:  # the warm-up's requests are not counted
                outcomes[outcome] += 1
                if outcome == "ok" and done <= end_at:
                    latencies.append(done - begun)
            if status == 429:  # what a well-behaved client does with Retry-After
                await asyncio.sleep(min(float(headers.get("retry-after", "1") or 1), 1.0))

    connections = await asyncio.gather(*(connect() for _ in range(clients)))
    await asyncio.gather(*(client(c) for c in connections))
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    return {"latencies": latencies, "outcomes": dict(outcomes), "late": late}


def _process_main(host: str, port: int, spec: LevelSpec, clients: int, start_at: float, end, results) -> None:
    try:
        import uvloop  # the generator must be as cheap as it can be

        uvloop.install()
    except ImportError:
        pass
    cpu_before = time.process_time()
    result = asyncio.run(_clients(host, port, spec, clients, start_at, end))
    result["cpu_s"] = time.process_time() - cpu_before
    results.put(result)


# --- a level: the processes, the server's CPU, the figures -------------------------------------------------


class StackCpu:
    """CPU seconds of a process tree by kind (gateway, tritonserver, model stubs, other), from /proc."""

    KINDS = (("triton_python_", "model stubs"), ("tritonserver", "tritonserver"), ("python", "gateway"))

    def __init__(self, root_pid: int | None) -> None:
        self.root_pid = root_pid
        self.ticks = os.sysconf("SC_CLK_TCK")

    def read(self) -> dict[str, float]:
        if self.root_pid is None:
            return {}
        stats = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = text[text.index("(") + 1:text.rindex(")")]
            fields = text[text.rindex(")") + 2:].split()
            stats[int(entry)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / self.ticks)
        children: dict[int, list[int]] = {}
        for pid, (_, parent, _) in stats.items():
            children.setdefault(parent, []).append(pid)
        totals: Counter = Counter()
        stack = [self.root_pid]
        while stack:
            pid = stack.pop()
            if pid in stats:
                comm, _, cpu = stats[pid]
                kind = next((name for prefix, name in self.KINDS if comm.startswith(prefix)), "other")
                totals[kind] += cpu
            stack.extend(children.get(pid, ()))
        return dict(totals)

    @staticmethod
    def cores(before: dict, after: dict, seconds: float) -> dict[str, float]:
        return {kind: round((after.get(kind, 0) - before.get(kind, 0)) / seconds, 2) for kind in after}


def processes_of(root_pid: int, prefix: str) -> list[int]:
    """Descendants of `root_pid` whose command line starts with `prefix` (e.g. the gateway workers)."""
    found, stack = [], [root_pid]
    while stack:
        pid = stack.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if prefix in command:
                found.append(child)
            stack.append(child)
    return found


def profile(pid: int, seconds: float, out: Path) -> subprocess.Popen | None:
    """py-spy sampling `pid` for `seconds` into `out` (collapsed stacks), if py-spy is installed."""
    try:
        return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "250",
                                 "--format", "raw", "-o", str(out), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    except OSError:
        return None


def summarise_profile(raw: Path, top: int = 45) -> str:
    """Inclusive and self shares of the busiest functions in a py-spy collapsed-stack file."""
    inclusive, own, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        frames = [frame.split(":")[0] for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += int(count)
        own[frames[-1]] += int(count)
    rows = [f"{total} samples", "inclusive:"]
    rows += [f"{100 * n / total:5.1f}% {f}" for f, n in inclusive.most_common(top)]
    rows += ["self:"] + [f"{100 * n / total:5.1f}% {f}" for f, n in own.most_common(top // 2)]
    return "\n".join(rows)


class GpuUtilisation:
    """nvidia-smi's utilisation.gpu every 200 ms while in the block; nothing where there is no nvidia-smi."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> "GpuUtilisation":
        try:
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200",
                 "-i", "0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return self
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_pct": round(statistics.fmean(self.samples), 1), "samples": len(self.samples)}


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def run_level(url: str, spec: LevelSpec, processes: int, duration_s: float, warmup_s: float,
              stack: StackCpu, profile_to: Path | None = None, done=None) -> dict:
    """`profile_to`: py-spy one gateway worker and one model stub during the level, into files there.
    `done()`: the level ends as soon as it says True (duration_s is then its longest)."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    processes = max(1, min(processes, spec.clients))
    shares = [spec.clients // processes + (1 if i < spec.clients % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    # Connections open before the warm-up starts; the counted window follows the warm-up.
    start_at = time.time() + 3.0 + spec.clients / 500 + warmup_s
    end = context.Value("d", start_at + duration_s, lock=False)
    workers = [context.Process(target=_process_main, args=(host, int(port), spec, share, start_at, end, results))
               for share in shares]
    for worker in workers:
        worker.start()
    time.sleep(max(start_at - time.time(), 0))
    cpu_before = stack.read()
    profilers = []
    if profile_to is not None and stack.root_pid is not None:
        for kind, prefix in (("gateway", "launcher.workers"), ("stub", "triton_python_backend_stub")):
            pids = processes_of(stack.root_pid, prefix) or ([stack.root_pid] if kind == "gateway" else [])
            if pids:
                raw = profile_to / f"profile-{kind}-{spec.name}.txt"
                profilers.append((raw, profile(pids[0], duration_s - 1, raw)))
    with GpuUtilisation() as gpu:
        while time.time() < end.value:
            time.sleep(0.2)
            if done is not None and done():
                end.value = time.time()
    cpu_after = stack.read()
    duration_s = end.value - start_at
    for raw, process in profilers:
        if process is not None:
            process.wait(timeout=60)
            if raw.exists():
                raw.with_suffix(".summary.txt").write_text(summarise_profile(raw))
    parts = [results.get(timeout=REQUEST_TIMEOUT_S + 60) for _ in workers]
    for worker in workers:
        worker.join()
    latencies = sorted(s for part in parts for s in part["latencies"])
    outcomes: Counter = Counter()
    for part in parts:
        outcomes.update(part["outcomes"])
    ok = outcomes.pop("ok", 0)
    refused = outcomes.pop("429", 0)
    generator_cpu = [part["cpu_s"] for part in parts]
    return {
        "name": spec.name,
        "path": spec.path,
        "documents_per_request": spec.documents,
        "clients": spec.clients,
        "seconds": duration_s,
        "requests": ok + refused + sum(outcomes.values()),
        "ok": ok,
        "failed": sum(outcomes.values()),
        "refused_429": refused,
        "errors": dict(outcomes),
        "answered_after_the_end": sum(part["late"] for part in parts),
        "requests_per_s": round(len(latencies) / duration_s, 1),
        "pairs_per_s": round(len(latencies) * spec.documents / duration_s, 1),
        "p50_ms": _ms(percentile(latencies, 50)),
        "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(percentile(latencies, 99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
        # Each generator process is one event loop on one core: near 1.0 it is saturated and the figure is its own.
        "generator": {"processes": processes, "cpu_s": round(sum(generator_cpu), 2),
                      "cores_used": round(sum(generator_cpu) / (duration_s + warmup_s), 2),
                      "busiest_process_share": round(max(generator_cpu) / (duration_s + warmup_s), 3),
                      "machine_cores": os.cpu_count()},
        "server_cores_used": StackCpu.cores(cpu_before, cpu_after, duration_s),
        "gpu_utilisation": gpu.summary(),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


# --- switches under load ----------------------------------------------------------------------------------


def run_switch_level(url: str, models: list[str], processes: int, warmup_s: float, settle_s: float,
                     stack: StackCpu, timeout_s: float) -> dict:
    """200 seed clients while /switch_model walks `models`; the level lasts until the last switch plus settle_s."""
    import urllib.request

    switches: list[dict] = []

    def switcher(started_at: float) -> None:
        time.sleep(max(started_at - time.time(), 0) + settle_s)
        for model in models:
            begun = time.time()
            request = urllib.request.Request(f"{url}/switch_model", data=_json({"model_name": model}),
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as response:
                    answer = json.loads(response.read())
                    switches.append({"model": model, "status": response.status,
                                     "seconds": round(time.time() - begun, 2),
                                     "load_time_s": answer.get("load_time_s")})
            except Exception as exc:
                switches.append({"model": model, "status": None, "error": f"{type(exc).__name__}: {exc}"[:300]})
            time.sleep(settle_s)

    spec = LevelSpec.parse("seed:200")
    # The level lasts until the switcher is done (its last settle included), at most timeout_s.
    thread = threading.Thread(target=switcher, args=(time.time() + 3.0 + spec.clients / 500 + warmup_s,), daemon=True)
    thread.start()
    level = run_level(url, spec, processes, timeout_s, warmup_s, stack, done=lambda: not thread.is_alive())
    level["name"] = "switch-200"
    level["switches"] = switches
    return level


# --- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running gateway")
    target.add_argument("--serve", metavar="MODEL", help="start `reranker serve` with this model on free ports")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workers", type=int, help="RERANKER_WORKERS of the served gateway")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="another setting of the served stack (repeatable)")
    parser.add_argument("--level", action="append", type=LevelSpec.parse, required=True)
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes per level")
    parser.add_argument("--check-generator", action="store_true",
                        help="run every level again with twice the generator processes")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--switch", help="comma-separated models to switch through under a 200-client load")
    parser.add_argument("--switch-settle", type=float, default=8.0, help="seconds of load before and between switches")
    parser.add_argument("--out", type=Path, help="folder for seed_load.json (and the stack's log with --serve)")
    parser.add_argument("--profile", action="store_true",
                        help="with --serve: py-spy a gateway worker and a model stub during the first seed level")
    return parser.parse_args(argv)


def device_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader", "-i", "0"],
                              capture_output=True, text=True, timeout=20).stdout.strip() or "cpu"
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = args.out or Path("bench_results/seed-load")
    out.mkdir(parents=True, exist_ok=True)
    serve = None
    if args.serve:
        from bench.e2e import ServeProcess

        for item in args.env:
            name, _, value = item.partition("=")
            os.environ[name] = value
        if args.workers is not None:
            os.environ["RERANKER_WORKERS"] = str(args.workers)
        serve = ServeProcess(args.model_repository, args.models_dir, args.serve, out / "serve.log", timeout_s=900,
                             request_timeout_s=60.0)
        url = serve.url
    else:
        url = args.url.rstrip("/")
    stack = StackCpu(serve.process.pid if serve else None)
    data = {"device": device_name(), "model": args.serve or "(the gateway's active model)",
            "gateway_workers": args.workers, "settings": args.env, "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "levels": []}
    profiled = False
    try:
        for spec in args.level:
            doubled = args.check_generator and spec.clients > 1
            runs = [args.processes, 2 * args.processes] if doubled else [args.processes]
            for processes in runs:
                profile_to = out if args.profile and spec.name.startswith("seed") and not profiled else None
                profiled = profiled or profile_to is not None
                level = run_level(url, spec, processes, args.duration, args.warmup, stack, profile_to)
                data["levels"].append(level)
                print(_brief(level), flush=True)
        if args.switch:
            level = run_switch_level(url, args.switch.split(","), args.processes, args.warmup, args.switch_settle,
                                     stack, timeout_s=600)
            data["levels"].append(level)
            print(_brief(level), "switches:", level["switches"], flush=True)
    finally:
        if serve is not None:
            serve.stop()
        (out / "seed_load.json").write_text(json.dumps(data, indent=1, ensure_ascii=False))
    print(table(data))
    return data


def _brief(level: dict) -> str:
    return (f"{level['name']:>12} x{level['generator']['processes']} procs: {level['requests_per_s']:>8} req/s "
            f"p50 {level['p50_ms']} p99 {level['p99_ms']} ms, failed {level['failed']} {level['errors'] or ''}, "
            f"429 {level['refused_429']}, generator {level['generator']['cores_used']} cores "
            f"(busiest {level['generator']['busiest_process_share']}), server {level['server_cores_used']}, "
            f"gpu {level['gpu_utilisation']}")


def table(data: dict) -> str:
    rows = [f"seed load on {data['device']}, model {data['model']}, gateway workers {data['gateway_workers']}",
            "| level | clients | generator procs (busiest core) | requests/s | p50 ms | p99 ms | failed | 429 |",
            "|---|---|---|---|---|---|---|---|"]
    for level in data["levels"]:
        g = level["generator"]
        rows.append(f"| {level['name']} | {level['clients']} | {g['processes']} ({g['busiest_process_share']:.2f}) "
                    f"| {level['requests_per_s']:,.0f} | {level['p50_ms']} | {level['p99_ms']} | {level['failed']} "
                    f"| {level['refused_429']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
