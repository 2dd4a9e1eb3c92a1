"""Finding a `tritonserver` and the command line and environment to run it.

In NVIDIA's Triton image the server and its python backend are installed; on a
laptop or in CI they come from the `nvidia-pytriton` wheel, whose python
backend ships one stub per Python version. The stub for the running Python is
assembled with the backend library into a backend directory, so the Triton
models run inside this very environment (same torch, same engine).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rerank_engine.contract import MODELS_DIR_ENV

PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the server's built-in default (/opt/tritonserver/backends)
    library_path: tuple[str, ...] = ()


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    """`explicit`, else a `tritonserver` on PATH, else the one in the pytriton wheel."""
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise TritonNotFound(f"{explicit} is not an executable tritonserver")
        return TritonInstall(explicit, None)
    on_path = shutil.which("tritonserver")
    if on_path:
        return TritonInstall(Path(on_path), None)
    return _from_pytriton_wheel()


def _from_pytriton_wheel() -> TritonInstall:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound(
            "no tritonserver on PATH and the nvidia-pytriton wheel is not installed: "
            "pip install 'reranker[triton]' (or use NVIDIA's tritonserver image)"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    server = package / "tritonserver"
    stub = server / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonNotFound(f"the pytriton wheel has no python backend stub for Python {PY_VERSION} ({stub})")
    _require_numpy_1()
    libs = package.parent / "nvidia_pytriton.libs"
    return TritonInstall(server / "bin" / "tritonserver", _assemble_backend_dir(server, stub), (str(libs),))


def _require_numpy_1() -> None:
    """nvidia-pytriton 0.7.0 declares numpy<2, and means it: under numpy 2 its stub hands the
    model every input tensor as copies of the tensor's first byte (seen on an H100 machine:
    a 29-byte string arrived as 1D 1D 1D 1D ...). Refuse to start rather than serve garbage."""
    numpy_version = importlib.metadata.version("numpy")
    if int(numpy_version.split(".")[0]) >= 2:
        raise TritonNotFound(
            f"numpy {numpy_version} is installed, but the nvidia-pytriton python backend requires numpy<2: "
            "pip install 'numpy<2'"
        )


def _assemble_backend_dir(server: Path, stub: Path) -> Path:
    """`<cache>/backends/python/` = libtriton_python.so + utils + this Python's stub.

    Built in a scratch folder and renamed into place, so concurrent launches
    never see a half-copied backend.
    """
    backends = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reranker"
    target = backends / f"triton-backends-{stub.stat().st_size}-py{PY_VERSION}"
    if (target / "python" / "triton_python_backend_stub").is_file():
        return target
    backends.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=backends))
    python_dir = scratch / "python"
    python_dir.mkdir()
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(server / "backends" / "python" / name, python_dir / name)
    shutil.copy2(stub, python_dir / "triton_python_backend_stub")
    try:
        scratch.rename(target)
    except OSError:  # another launch won the race
        shutil.rmtree(scratch, ignore_errors=True)
    return target


@dataclass(frozen=True)
class TritonOptions:
    model_repository: Path
    models_dir: Path
    http_port: int
    grpc_port: int
    metrics_port: int
    log_verbose: int = 0
    bind_address: str = "127.0.0.1"
    config_name: str | None = None  # --model-config-name: configs/<name>.pbtxt where a model has one
    trace_endpoint: str | None = None  # OTLP/HTTP collector for Triton's OpenTelemetry traces; None: off
    trace_rate: int = 1


def visible_gpus() -> int:
    """GPUs this process can use, without importing torch: what nvidia-smi lists, less what
    CUDA_VISIBLE_DEVICES hides. 0 without a driver."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and hidden.strip() in ("", "-1"):
        return 0
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    count = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return min(count, len(hidden.split(","))) if hidden else count


def resolve_config_name(setting: str) -> str | None:
    """`auto`: the `gpu` variant of a model's config where a GPU is visible (bge runs several instances per
    GPU; a CPU server keeps one copy of each model); `none` or empty: config.pbtxt everywhere."""
    if setting == "auto":
        return "gpu" if visible_gpus() else None
    return None if setting in ("", "none") else setting


def triton_command(install: TritonInstall, options: TritonOptions) -> list[str]:
    command = [
        str(install.binary),
        f"--model-repository={options.model_repository}",
        "--model-control-mode=explicit",
        f"--http-address={options.bind_address}",
        f"--http-port={options.http_port}",
        f"--grpc-address={options.bind_address}",
        f"--grpc-port={options.grpc_port}",
        f"--metrics-address={options.bind_address}",
        f"--metrics-port={options.metrics_port}",
        "--allow-metrics=true",
        f"--log-verbose={options.log_verbose}",
        # Requests that are queued when a model unloads finish before it goes.
        "--exit-timeout-secs=30",
        # Server readiness means "up and not shutting down", as orchestrators read it. Triton's
        # default (strict) readiness is false while any model loads and stays false after a failed
        # load until that model is unloaded: a cluster-wide switch would take every replica out of
        # its Service for the load, and one model without weights would keep them out. The gateway
        # asks for each model's readiness itself.
        "--strict-readiness=false",
    ]
    if install.backend_dir is not None:
        command.append(f"--backend-directory={install.backend_dir}")
    if options.config_name:
        command.append(f"--model-config-name={options.config_name}")
    if options.trace_endpoint:
        command += trace_flags(options.trace_endpoint, options.trace_rate)
    return command


def trace_flags(endpoint: str, rate: int) -> list[str]:
    """Triton's OpenTelemetry tracing (`--trace-config mode=opentelemetry`): request timestamps as spans,
    exported over OTLP/HTTP; a request whose gRPC metadata carries a W3C traceparent (the gateway's) is
    traced as that span's child."""
    url = endpoint.rstrip("/")
    url = url if url.endswith("/v1/traces") else f"{url}/v1/traces"
    return [
        "--trace-config=mode=opentelemetry",
        "--trace-config=level=TIMESTAMPS",
        f"--trace-config=rate={rate}",
        "--trace-config=count=-1",
        f"--trace-config=opentelemetry,url={url}",
        "--trace-config=opentelemetry,resource=service.name=triton",
    ]


def triton_environment(install: TritonInstall, options: TritonOptions, base: dict[str, str]) -> dict[str, str]:
    """The server's environment; the python backend stubs inherit it.

    The stub embeds libpython and takes its prefix, and so its site-packages,
    from `python3` on PATH; it ignores PYTHONPATH. This interpreter's bin
    directory goes first, so the models import this environment's packages
    (and its numpy, which must be numpy<2).
    """
    env = dict(base)
    env[MODELS_DIR_ENV] = str(options.models_dir)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    library_path = [*install.library_path]
    # The wheel's stub needs this Python's libpython. A system folder is left out: the loader
    # searches it anyway, and listing it first would shadow CUDA compat libraries in NVIDIA's image.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    shared = bool(sysconfig.get_config_var("Py_ENABLE_SHARED"))
    if install.library_path and shared and not libdir.startswith(("/usr/lib", "/lib")):
        library_path.append(libdir)
    if library_path:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*library_path, env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env
