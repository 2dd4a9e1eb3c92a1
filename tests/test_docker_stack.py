"""The CPU stack built and run in Docker, as the README's Docker section tells a user to.

`docker-compose up -d --build` of docker-compose.yml + docker-compose.cpu.yml (Debian's
docker-compose 1.29; bookworm packages no compose v2 plugin), with a third file that only this
test adds: the local base image for `PYTHON_IMAGE` (no registry image can be pulled here), torch's
CPU wheel from a loopback index for `TORCH_INDEX_URL`, host-network builds (the way out to PyPI
here) and test image names. The monitoring services stay out (the CPU file puts them in a
profile); the gateway is published on a free loopback port through RERANKER_GATEWAY_PUBLISH.

Then, against the running containers: the README's curls answer as the README shows; the gateway
process runs as a non-root user and Triton publishes no port; Triton's process killed as a crash
kills it, the restart policy starts it again and the gateway answers 503, then 200 with the same
score, and no request fails once it is back; `docker-compose down -v` leaves no container, network
or volume. Where no Docker engine answers, every test skips, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from launcher.process import free_ports
from tests import docker_engine
from tests.docker_engine import REPO_ROOT, Compose, docker

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]  # a cold build included

PROJECT = "reranker-test"
COMPOSE_FILES = [REPO_ROOT / "docker-compose.yml", REPO_ROOT / "docker-compose.cpu.yml"]
README = REPO_ROOT / "README.md"
# The README sections whose curls must answer as shown against the container stack.
CURL_SECTIONS = ("Quick start", "Containers without a GPU")
PAIR = {"query": "what do pandas eat?", "document": "Pandas eat bamboo."}


def _dockerfile_arg(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.MULTILINE)
    assert match, f"no ARG {name}=... in {dockerfile.name}"
    return match[1]


@dataclass
class Stack:
    compose: Compose
    url: str  # the gateway, as published on loopback


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/health/ready", timeout=5)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1)
    raise TimeoutError(f"the gateway was not ready in {timeout_s:.0f} s: {last!r}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    problem = docker_engine.engine_problem()
    if problem:
        pytest.skip(f"no Docker engine: {problem} (./run.sh test installs docker.io and starts dockerd as root)")
    try:
        base = docker_engine.base_image()
    except docker_engine.CannotMakeBase as exc:
        pytest.skip(f"no local base image: {exc}")
    index = docker_engine.torch_index(_dockerfile_arg(REPO_ROOT / "Dockerfile.cpu", "TORCH_VERSION"))
    (port,) = free_ports(1)
    with docker_engine.serve_folder(index) as index_url:
        build = {"network": "host", "args": {"PYTHON_IMAGE": base}}
        override = {"services": {
            "triton": {"image": f"{PROJECT}-triton-cpu",
                       "build": {**build, "args": {**build["args"], "TORCH_INDEX_URL": index_url}}},
            "gateway": {"image": f"{PROJECT}-gateway", "build": build},
        }}
        extra = tmp_path_factory.mktemp("compose") / "docker-compose.test.yml"
        extra.write_text(yaml.safe_dump(override))
        compose = Compose(PROJECT, [*COMPOSE_FILES, extra], {"RERANKER_GATEWAY_PUBLISH": f"127.0.0.1:{port}"})
        compose.run("down", "--volumes", "--remove-orphans")  # what a crashed earlier run left
        try:
            started = time.monotonic()
            compose.run("build", timeout=2400)
            built = time.monotonic()
            compose.run("up", "-d", timeout=600)
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, 300)
            print(f"docker stack: build {built - started:.0f} s, up and ready {time.monotonic() - built:.0f} s")
        except BaseException:
            print(compose.run("logs", "--no-color", "--tail", "60", check=False).stdout)
            compose.run("down", "--volumes", "--remove-orphans", check=False)
            raise
    try:
        yield Stack(compose, url)
    finally:
        compose.run("down", "--volumes", "--remove-orphans", check=False)


# --- the README's curls -----------------------------------------------------------------------------


def _readme_curls() -> list[tuple[str, str]]:
    """(command, the answer shown under it) of each curl in the CURL_SECTIONS' bash blocks."""
    curls, section, in_block, lines = [], "", False, []
    for line in README.read_text().splitlines():
        if line.startswith("#") and not in_block:
            section = line.lstrip("#").strip()
        elif line.startswith("```"):
            if in_block and section.startswith(CURL_SECTIONS):
                curls += _block_curls(lines)
            in_block, lines = not in_block and line.strip() == "```bash", []
        elif in_block:
            lines.append(line)
    return curls


def _block_curls(lines: list[str]) -> list[tuple[str, str]]:
    found, command, answer = [], None, []
    joined, current = [], ""
    for line in lines:  # continuation lines joined
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
        else:
            joined.append(current + line)
            current = ""
    for line in [*joined, ""]:
        if line.lstrip().startswith("#") and command is not None:
            answer.append(line.lstrip()[1:].strip())
            continue
        if command is not None:
            found.append((command, "".join(answer)))
            command, answer = None, []
        if line.strip().startswith("curl "):
            command = line.strip()
    return found


def _same_shape(shown, answered, where: str = "answer") -> None:
    """The answer has the README's keys and values; scores within 1e-3, other numbers only numbers."""
    if isinstance(shown, dict):
        assert isinstance(answered, dict) and set(answered) == set(shown), f"{where}: {answered} vs {shown}"
        for key in shown:
            _same_shape(shown[key], answered[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(answered, list) and len(answered) == len(shown), f"{where}: {answered} vs {shown}"
        for i, (a, b) in enumerate(zip(shown, answered)):
            _same_shape(a, b, f"{where}[{i}]")
    elif isinstance(shown, bool) or shown is None or isinstance(shown, str):
        assert answered == shown, f"{where}: {answered!r}, the README shows {shown!r}"
    else:
        assert isinstance(answered, (int, float)) and not isinstance(answered, bool), f"{where}: {answered!r}"
        if "score" in where.rsplit(".", 1)[-1]:
            assert answered == pytest.approx(shown, abs=1e-3), f"{where}: {answered}, the README shows {shown}"


def test_the_readmes_curls_answer_as_shown(stack):
    curls = _readme_curls()
    assert len(curls) >= 4, f"found only {len(curls)} curls in the README's {CURL_SECTIONS} sections"
    curl = shutil.which("curl")
    assert curl, "curl is not installed"
    for command, shown in curls:
        words = shlex.split(command.replace("http://localhost:8000", stack.url).replace("localhost:8000", stack.url))
        assert words[0] == "curl" and stack.url in " ".join(words), command
        result = subprocess.run([curl, *words[1:], "-sS", "-w", "\n%{http_code}"], capture_output=True, text=True,
                                timeout=60)
        body, _, status = result.stdout.rpartition("\n")
        assert result.returncode == 0 and status == "200", f"{command}\n-> {status} {body} {result.stderr}"
        assert shown, f"the README shows no answer under {command}"
        _same_shape(json.loads(shown), json.loads(body), where=command.split()[-1])


# --- users and ports --------------------------------------------------------------------------------


def _process_uids(container: str) -> list[int]:
    """Real, effective, saved and filesystem uid of the container's main process, as the host sees it."""
    pid = docker("inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    return [int(uid) for uid in re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)[1].split()]


def test_the_gateway_runs_as_a_non_root_user_and_only_it_is_published(stack):
    gateway, triton = stack.compose.container("gateway"), stack.compose.container("triton")
    assert all(uid != 0 for uid in _process_uids(gateway)), _process_uids(gateway)
    assert docker("port", triton).stdout.strip() == "", "Triton publishes a port"
    bindings = json.loads(docker("inspect", "--format", "{{json .NetworkSettings.Ports}}", triton).stdout)
    assert bindings and all(host is None for host in bindings.values()), bindings  # exposed, never bound
    published = docker("port", gateway).stdout.split()
    assert published[-1] == stack.url.removeprefix("http://"), published


# --- a Triton crash -----------------------------------------------------------------------------------


def test_a_killed_triton_is_restarted_and_the_gateway_answers_503_then_200(stack):
    triton = stack.compose.container("triton")
    inspect = "{{.RestartCount}} {{.State.Pid}}"
    restarts, pid = map(int, docker("inspect", "--format", inspect, triton).stdout.split())
    before = httpx.post(f"{stack.url}/rerank", json=PAIR, timeout=30)
    assert before.status_code == 200, before.text
    answers: list[tuple[float, int, dict]] = []
    killed = threading.Event()
    done = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            deadline = time.monotonic() + 240
            recovered_at = None
            while time.monotonic() < deadline:
                try:
                    response = http.post(f"{stack.url}/rerank", json=PAIR)
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as exc:  # no answer, or not JSON: a failure too
                    status, body = 0, {"error": repr(exc)}
                answers.append((time.monotonic(), status, body))
                if killed.is_set() and status == 200 and recovered_at is None:
                    recovered_at = time.monotonic()
                if recovered_at is not None and time.monotonic() - recovered_at > 15:
                    break  # 15 s of traffic after the recovery
                time.sleep(0.05)
        done.set()

    thread = threading.Thread(target=client)
    thread.start()
    time.sleep(1)
    # As a crash or the kernel's OOM killer ends it: `docker kill` would count as a manual stop, which
    # Docker never restarts whatever the policy (seen with `always` too).
    kill_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    killed.set()
    thread.join(timeout=300)
    assert done.is_set(), "the client loop did not end"

    after = [(t - kill_at, status, body) for t, status, body in answers if t > kill_at]
    statuses = [status for _, status, _ in after]
    assert 200 in statuses, f"no 200 in {time.monotonic() - kill_at:.0f} s after the kill: {after[-3:]}"
    first_200 = statuses.index(200)
    down = after[:first_200]
    assert down, "no request saw Triton gone"
    # Triton gone, then back but still loading the model: both are "try again", never a 5xx of ours.
    for _, status, body in down:
        assert status == 503 and body.get("error_type") in ("backend_unavailable", "model_not_ready"), (status, body)
    back = after[first_200:]
    assert all(status == 200 for _, status, _ in back), [a for a in back if a[1] != 200][:3]
    assert {body["score"] for _, _, body in back} == {before.json()["score"]}
    assert back[-1][0] - back[0][0] > 10, "too short a run after the recovery to show it holds"
    new_restarts, new_pid = map(int, docker("inspect", "--format", inspect, triton).stdout.split())
    assert new_restarts == restarts + 1 and new_pid not in (0, pid), (restarts, new_restarts, pid, new_pid)
    print(f"Triton killed: 503 for {back[0][0]:.1f} s ({len(down)} requests), then {len(back)} answers of 200")


# --- teardown ---------------------------------------------------------------------------------------------


def test_compose_down_leaves_no_container_network_or_volume(stack):
    # Runs last (file order): it takes the stack down.
    present = stack.compose.leftovers()
    assert set(present) == {"containers", "networks", "volumes"}, present  # so that "none left" means something
    stack.compose.run("down", "--volumes")
    assert stack.compose.leftovers() == {}
