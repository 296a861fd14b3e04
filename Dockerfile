# One image for every kartahook process: service, worker, sandbox and demo subscriber.
# The command picks the role: `docker run IMAGE serve …`, `… worker`, `… sandbox …`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# The locked dependencies first, in their own layer: they change less often than the code.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY sandbox ./sandbox
COPY kartahook ./kartahook
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home kartahook

USER 10001
EXPOSE 8700
# SIGTERM drains (the CLI handles it); give it the grace period the orchestrator allows.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kartahook"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8700"]
