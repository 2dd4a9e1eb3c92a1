# syntax=docker/dockerfile:1
# Two images from one file:
#   triton   NVIDIA's Triton with torch, transformers and the scoring engine (GPU)
#   gateway  the FastAPI gateway, without torch
# Built and started by docker-compose.yml; weights are mounted from ./models.

# 24.10 ships Triton 2.51, the server the nvidia-pytriton 0.7.0 wheel carries
# for machines without containers: both paths run the same server version.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS triton
# The image has CUDA 12.6 and Python 3.10; torch's cu124 builds run on it.
ARG TORCH_SPEC="torch==2.5.1"
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
WORKDIR /workspace
RUN pip install --no-cache-dir "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY rerank_engine ./rerank_engine
COPY gateway ./gateway
COPY client ./client
COPY launcher ./launcher
# Not the `triton` extra: this image has its own tritonserver and python backend.
RUN pip install --no-cache-dir ".[engine]"
# COPY keeps the <model>/1/model.py links to model_repository/reranker_model.py.
COPY model_repository ./model_repository
ENV RERANKER_MODEL_REPOSITORY=/workspace/model_repository \
    RERANKER_MODELS_DIR=/workspace/models
EXPOSE 8100 8101 8102
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=6 \
    CMD curl -fsS http://localhost:8100/v2/health/live || exit 1
# `reranker triton` execs tritonserver, so it is PID 1 and gets the container's signals.
ENTRYPOINT ["reranker", "triton"]

FROM python:3.11-slim AS gateway
WORKDIR /app
COPY pyproject.toml README.md ./
# rerank_engine comes along for its torch-free contract module (tensor names).
COPY rerank_engine ./rerank_engine
COPY gateway ./gateway
COPY client ./client
COPY launcher ./launcher
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home reranker
USER reranker
ENV RERANKER_HOST=0.0.0.0 \
    RERANKER_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=6 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
ENTRYPOINT ["reranker", "gateway"]
