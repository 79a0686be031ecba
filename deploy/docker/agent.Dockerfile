# syntax=docker/dockerfile:1
# atoll agent for NVIDIA GPU hosts.
#   docker build -f deploy/docker/agent.Dockerfile -t atoll/agent:0.1.0 .
#   docker run --gpus all -e ATOLL_COORDINATOR=... -e ATOLL_JOIN_TOKEN=... atoll/agent:0.1.0
# Build context: the repository root (see .dockerignore).
# torch 2.13.0 from PyPI is built against CUDA 13.0 and brings its CUDA libraries as wheels;
# the base image matches it (the host needs an NVIDIA driver that supports CUDA 13.0).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu 24.04's Python 3.12; versions come from the pinned base image (see .hadolint.yaml, DL3008).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The CUDA torch from PyPI (it pins its own triton and CUDA libraries), then everything else
# exactly as locked: requirements/runtime.txt is the run-time part of requirements/lock.txt with
# its pins and sha256 hashes (scripts/setup_env.py runtime), installed without resolving.
COPY requirements/runtime.txt requirements/
RUN pip install torch==2.13.0 \
    && pip install --require-hashes --no-deps -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY atoll/ atoll/
COPY coordinator/ coordinator/
COPY agent/ agent/
COPY planner/ planner/
COPY kernels/ kernels/
COPY proto/ proto/
RUN pip install --no-deps --no-build-isolation . && pip check && atoll --help > /dev/null

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="atoll-agent" \
      org.opencontainers.image.source="https://github.com/atoll/atoll" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# python3-dev: Triton compiles a small C launcher at first use and needs Python.h and a C compiler.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 atoll \
    && useradd --system --uid 10001 --gid atoll --home-dir /var/lib/atoll --create-home atoll
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/atoll/healthcheck.py
COPY deploy/docker/agent-entrypoint.sh /usr/local/bin/atoll-agent-entrypoint
# ATOLL_WORKER_LISTEN: the agent advertises this address to the coordinator, and a wildcard
# host is advertised as 127.0.0.1; set it to a name or IP other hosts can reach (compose: the
# service name, Kubernetes: the pod IP), as deploy/compose and deploy/k8s do.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    TRITON_CACHE_DIR=/var/lib/atoll/triton-cache \
    ATOLL_STATE_DIR=/var/lib/atoll/agent \
    ATOLL_WORKER_LISTEN=0.0.0.0:7071 \
    ATOLL_ENTRY_LISTEN=0.0.0.0:7443
USER 10001:10001
WORKDIR /var/lib/atoll
VOLUME ["/var/lib/atoll"]
# 7071: Worker gRPC (atoll.v1.Worker, atoll.v1.DataPlane, grpc.health.v1)
# 7443: Entry gRPC (atoll.v1.Entry: clients invoke workflows here, grpc.health.v1)
EXPOSE 7071 7443
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/opt/atoll/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["atoll-agent-entrypoint"]
