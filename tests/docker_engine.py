"""What the container test needs besides the repository's files: a Docker engine, a local base
image in place of python:3.11-slim (no registry image can be pulled here), torch's CPU wheel on
a loopback index, and docker-compose runs.

The base image is Debian 12 from `debootstrap --variant=minbase` with Python 3.11, pip and the
shared libpython3.11, made into an image with `docker import`. It stands for python:3.11-slim:
`python` and `pip` on PATH, packages installed system-wide. It trusts the host's own CA
certificates (/usr/local/share/ca-certificates) too, so builds behind a TLS-inspecting proxy (as
here) reach PyPI. It is made once and kept in the engine, tagged with a hash of its recipe and of
those certificates, so a change to either makes a new one. torch's CPU wheel
comes from the host's pip (its configured indexes and find-links; download.pytorch.org is not
reachable here) into ~/.cache/reranker/docker/, and is served to the image build on loopback.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reranker" / "docker"

BASE_SUITE = "bookworm"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-pip", "libpython3.11", "ca-certificates")
# Run in the new root: what python:3.11-slim has that Debian's python3 lacks. Debian marks its
# Python externally managed (pip refuses system-wide installs); the official image does not.
BASE_FINISH = """
set -e
update-ca-certificates >/dev/null
rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 /usr/local/bin/python
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/locale/*
"""
HOST_CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["python"]')


class CannotMakeBase(RuntimeError):
    """The engine runs, but this machine cannot make the base image (no debootstrap, or not root)."""


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 60 s"
    if info.returncode != 0 or not info.stdout.strip():
        return f"`docker info` failed: {(info.stderr or info.stdout).strip()[-300:]}"
    return None


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def base_image() -> str:
    """The local base image's tag, made first where the engine does not have it."""
    certificates = sorted(HOST_CA_CERTIFICATES.glob("*.crt")) if HOST_CA_CERTIFICATES.is_dir() else []
    recipe = hashlib.sha256(repr((BASE_SUITE, BASE_MIRROR, BASE_PACKAGES, BASE_FINISH, BASE_CHANGES)).encode())
    for certificate in certificates:
        recipe.update(certificate.read_bytes())
    tag = f"reranker-test-base:{BASE_SUITE}-{recipe.hexdigest()[:12]}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    if shutil.which("debootstrap") is None:
        raise CannotMakeBase("debootstrap is not installed: apt-get install debootstrap (./run.sh test installs it)")
    if os.geteuid() != 0:
        raise CannotMakeBase("debootstrap needs root to make it")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as scratch:
        root = Path(scratch) / "root"
        debootstrap = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        subprocess.run([*debootstrap, BASE_SUITE, str(root), BASE_MIRROR], check=True, capture_output=True, timeout=900)
        for certificate in certificates:
            shutil.copy2(certificate, root / "usr/local/share/ca-certificates" / certificate.name)
        subprocess.run(["chroot", str(root), "/bin/sh", "-c", BASE_FINISH], check=True, capture_output=True,
                       timeout=120)
        changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", *changes, "-", tag], stdin=tar.stdout, capture_output=True,
                                  text=True, timeout=600)
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise RuntimeError(f"docker import failed: {imported.stderr[-2000:]}")
    return tag


def torch_index(version: str) -> Path:
    """A folder laid out as a simple index (torch/<wheel>) holding torch `version` for Python 3.11,
    fetched once by the host's pip."""
    index = CACHE / "torch-index"
    wheels = index / "torch"
    if not list(wheels.glob(f"torch-{version}-cp311-*.whl")):
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.11", "--dest", str(wheels), f"torch=={version}"],
            check=True, timeout=1800,
        )
    return index


# The index's URL is a build argument, and the legacy builder reuses a cached step only when the
# arguments it sees are the same: a fixed port keeps the torch layer cached between runs.
INDEX_PORT = 38613


@contextmanager
def serve_folder(folder: Path, port: int = INDEX_PORT) -> Iterator[str]:
    """`folder` over HTTP on loopback, as pip reads an index (directory listings); yields its URL.
    pip counts 127.0.0.1 as a secure origin, so plain HTTP does. Where `port` is taken, any free
    one (the build then misses its cache from the torch step on)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Compose:
    """docker-compose 1.29 (Debian's) on the repository's files plus `extra`, as project `project`."""

    def __init__(self, project: str, files: list[Path], env: dict[str, str]):
        binary = shutil.which("docker-compose")
        if binary is None:
            raise RuntimeError("docker-compose is not installed: apt-get install docker-compose")
        self.command = [binary, "--project-name", project, "--project-directory", str(REPO_ROOT)]
        for file in files:
            self.command += ["--file", str(file)]
        # The caller's RERANKER_* and COMPOSE_* variables would change what the files say.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RERANKER_", "COMPOSE_"))}
        self.env = {**clean, **env}
        self.project = project

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.command, *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"docker-compose {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def container(self, service: str) -> str:
        ids = self.run("ps", "-q", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers (running or not), networks and volumes the engine still has."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {
            "containers": docker("ps", "-a", "-q", "--filter", label).stdout.split(),
            "networks": docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": docker("volume", "ls", "-q", "--filter", label).stdout.split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}
