# syntax=docker/dockerfile:1
# atoll agent without a GPU (CPU runtime, or simulated GPUs declared in node.yaml for demos).
#   docker build -f deploy/docker/agent-cpu.Dockerfile -t atoll/agent-cpu:0.1.0 .
# Build context: the repository root (see .dockerignore).
# Python 3.11: the version requirements/lock.txt is resolved for (its hashes name cp311 wheels).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Exactly the locked set: requirements/runtime*.txt are the run-time part of requirements/lock.txt,
# with its pins and sha256 hashes (scripts/setup_env.py runtime); pip resolves nothing, so a new
# release of any dependency cannot change the image. The CPU torch comes from PyTorch's CPU index.
COPY requirements/runtime.txt requirements/runtime-torch-cpu.txt requirements/
RUN pip install --require-hashes --no-deps -r requirements/runtime.txt \
    && pip install --require-hashes --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
       -r requirements/runtime-torch-cpu.txt
COPY pyproject.toml README.md ./
COPY atoll/ atoll/
COPY coordinator/ coordinator/
COPY agent/ agent/
COPY planner/ planner/
COPY kernels/ kernels/
COPY proto/ proto/
RUN pip install --no-deps --no-build-isolation . && pip check && atoll --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="atoll-agent-cpu" \
      org.opencontainers.image.source="https://github.com/atoll/atoll" \
      org.opencontainers.image.licenses="Apache-2.0"
# gcc, libc6-dev: atoll's AVX-512 CPU kernels (atoll.kernels.cpu_ops) are compiled for the host's
# CPU on first use, into the atoll user's cache; without a compiler the agent serves with oneDNN.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
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
    ATOLL_STATE_DIR=/var/lib/atoll/agent \
    ATOLL_WORKER_LISTEN=0.0.0.0:7071 \
    ATOLL_ENTRY_LISTEN=0.0.0.0:7443
USER 10001:10001
WORKDIR /var/lib/atoll
VOLUME ["/var/lib/atoll"]
# 7071: Worker gRPC (atoll.v1.Worker, atoll.v1.DataPlane, grpc.health.v1)
# 7443: Entry gRPC (atoll.v1.Entry: clients invoke workflows here, grpc.health.v1)
EXPOSE 7071 7443
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/atoll/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["atoll-agent-entrypoint"]
