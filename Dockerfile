# The gateway as one container: HTTP API on GATEWAY_HTTP_PORT (8000), MLLP on GATEWAY_MLLP_PORT (2575).
# Set GATEWAY_DATABASE_URL to a postgresql+psycopg:// URL in production (several containers can share
# it: see compose.yaml); SQLite in /data otherwise.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_HTTP_HOST=0.0.0.0 GATEWAY_MLLP_HOST=0.0.0.0 \
    GATEWAY_HTTP_PORT=8000 GATEWAY_MLLP_PORT=2575 \
    GATEWAY_DATA_DIR=/data \
    GATEWAY_DATABASE_URL=sqlite:////data/gateway.db \
    GATEWAY_MAPPINGS_DIR=/app/mappings \
    GATEWAY_LOG_FORMAT=json
WORKDIR /app

# 1. Dependencies only, in their own layer: it is rebuilt when pyproject.toml changes, not on every
#    code edit. A stub package lets pip resolve and install them; the real code comes in step 2.
COPY pyproject.toml README.md ./
RUN mkdir gateway && touch gateway/__init__.py \
    && pip install . \
    && pip uninstall --yes hl7-fhir-gateway \
    && rm -rf gateway build *.egg-info

# 2. The gateway itself (no dependency resolution: they are all there).
COPY gateway ./gateway
RUN pip install --no-deps . && rm -rf build *.egg-info \
    && useradd --system --uid 10001 gateway && mkdir -p /data && chown gateway /data
COPY mappings ./mappings
COPY fixtures/demo ./fixtures/demo

USER gateway
VOLUME ["/data"]
EXPOSE 8000 2575
# The port the gateway really listens on (GATEWAY_HTTP_PORT, as overridden at run time), not a fixed one.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_HTTP_PORT', '8000'), timeout=4)"
CMD ["gateway", "serve"]
