# syntax=docker/dockerfile:1
# atoll coordinator (control plane), CPU only.
#   docker build -f deploy/docker/coordinator.Dockerfile -t atoll/coordinator:0.1.0 .
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
LABEL org.opencontainers.image.title="atoll-coordinator" \
      org.opencontainers.image.source="https://github.com/atoll/atoll" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 atoll \
    && useradd --system --uid 10001 --gid atoll --home-dir /var/lib/atoll --create-home atoll
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /opt/atoll/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ATOLL_LISTEN=0.0.0.0:7070 \
    ATOLL_METRICS_LISTEN=0.0.0.0:9090 \
    ATOLL_STATE_DIR=/var/lib/atoll/coordinator
USER 10001:10001
WORKDIR /var/lib/atoll
VOLUME ["/var/lib/atoll"]
# 7070: gRPC (atoll.v1 services, grpc.health.v1, reflection); 9090: Prometheus /metrics
EXPOSE 7070 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/atoll/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["atoll", "coordinator"]
