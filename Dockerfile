# syntax=docker/dockerfile:1
# One image for every kartahook process: service, worker, sandbox and demo subscriber.
# The command picks the role: `docker run IMAGE serve …`, `… worker`, `… sandbox …`.
#
# Two stages: the builder installs requirements-runtime.lock (runtime dependencies only, with
# hashes; no pytest, mypy, ruff or py-spy) and the project into /opt/venv; the final stage copies
# that venv onto a clean base and runs as an unprivileged user.
#
# The base is pinned by exact version. Pin it by digest too, and refresh the digest when the
# base image is rebuilt upstream (security fixes):
#   docker buildx imagetools inspect python:3.11.13-slim-bookworm   # prints the index digest
#   docker build --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# The locked dependencies first, in their own layer: they change less often than the code.
COPY requirements-runtime.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY sandbox ./sandbox
COPY kartahook ./kartahook
# Not editable: the code goes into the venv (compiled to bytecode here, so a read-only root
# filesystem costs nothing at run time).
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin kartahook
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001
# Public listener (webhooks, probes) and admin listener (/admin, /metrics).
EXPOSE 8700 8704
# Liveness of the default role (serve); compose overrides it per role (the worker's probe port),
# or set HEALTHCHECK_URL.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8700/healthz'), timeout=2)"]
# SIGTERM drains (the CLI handles it); give it the grace period the orchestrator allows.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kartahook"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8700", "--admin-port", "8704"]
