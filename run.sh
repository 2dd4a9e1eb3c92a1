#!/usr/bin/env bash
# The commands of the README, on a fresh Debian 12 / Python 3.11 machine:
#   ./run.sh serve       install everything, then start Triton + the gateway on :8000 serving minilm-l6
#   ./run.sh test        install what the tests need, then run every tier (what CI runs)
#   ./run.sh test-fast   the unit and in-process tiers without the slow tests, for the edit-test loop
#                        (installs only what is missing: a quick check when nothing is)
# Extra arguments go to `reranker serve` or to pytest.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${RERANKER_VENV:-.venv}
# A plain `torch` would pull a multi-GB CUDA build on a CPU-only machine; on a GPU server
# set RERANKER_TORCH_SPEC to the build you want.
TORCH_SPEC=${RERANKER_TORCH_SPEC:-torch==2.13.0}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

system_packages() {
  # Triton's python backend stub embeds libpython of the running Python version.
  local version libdir
  version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  libdir=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
  if ! ldconfig -p | grep -q "libpython${version}.so.1.0" && [ ! -e "$libdir/libpython${version}.so.1.0" ]; then
    apt_install "libpython${version}"
  fi
  if [ "${1:-}" = test ]; then
    local wanted=()
    command -v docker-compose >/dev/null || wanted+=(docker-compose)  # the compose file is validated by a real parser
    command -v prometheus >/dev/null || wanted+=(prometheus)  # the dashboard's queries run on a real Prometheus
    command -v chromium >/dev/null || wanted+=(chromium)  # /docs and /redoc rendered offline by a real browser
    command -v redis-server >/dev/null || wanted+=(redis-server)  # the score cache's shared tier, tested on a real one
    if [ ${#wanted[@]} -gt 0 ]; then apt_install "${wanted[@]}"; fi
  fi
}

docker_engine() {
  # tests/test_docker_stack.py builds and runs the CPU compose stack: Debian's Docker engine, and
  # debootstrap for its local base image. Without an engine the test skips, saying why.
  local wanted=()
  command -v dockerd >/dev/null || wanted+=(docker.io)
  command -v debootstrap >/dev/null || wanted+=(debootstrap)
  if [ ${#wanted[@]} -gt 0 ]; then apt_install "${wanted[@]}"; fi
  docker info >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: no Docker engine runs and starting one needs root: the container test will skip" >&2
    return 0
  fi
  local log=/var/log/reranker-dockerd.log
  echo "run.sh: starting dockerd (log: $log)" >&2
  nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "run.sh: dockerd did not answer in 60 s (see $log): the container test will skip" >&2
}

python_ready() {
  # Whether .venv has the project (editable) and every requirement of the extras "$1", at versions that
  # satisfy them: then test-fast needs no install step.
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import importlib.metadata as metadata, sys, tomllib
from packaging.requirements import Requirement
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = list(project["dependencies"])
for extra in sys.argv[1].split(","):
    wanted += project["optional-dependencies"][extra]
metadata.version(project["name"])
for line in wanted:
    requirement = Requirement(line)
    if requirement.marker is None or requirement.marker.evaluate():
        assert requirement.specifier.contains(metadata.version(requirement.name), prereleases=True), line
PY
}

python_packages() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install -q -e ".[$1]"
}

case "${1:-}" in
  serve)
    shift
    system_packages serve
    python_packages engine,triton,minilm
    "$VENV/bin/reranker" weights minilm >/dev/null
    exec "$VENV/bin/reranker" serve "$@"
    ;;
  test)
    shift
    system_packages test
    docker_engine
    python_packages engine,triton,minilm,test
    exec "$VENV/bin/python" -m pytest -q "$@"
    ;;
  test-fast)
    shift
    if ! python_ready engine,triton,minilm,test; then
      system_packages test
      python_packages engine,triton,minilm,test
    fi
    exec "$VENV/bin/python" -m pytest -q -m "not slow and not integration" tests/engine tests/gateway tests/launcher tests/app "$@"
    ;;
  *)
    echo "usage: $0 serve [reranker serve flags] | test [pytest args] | test-fast [pytest args]" >&2
    exit 2
    ;;
esac
