# The gateway as one container: HTTP API on 8000, MLLP on 2575. Set GATEWAY_DATABASE_URL to a
# postgresql+psycopg:// URL in production (several containers can share it); SQLite otherwise.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    GATEWAY_HTTP_HOST=0.0.0.0 GATEWAY_MLLP_HOST=0.0.0.0 \
    GATEWAY_DATABASE_URL=sqlite:////data/gateway.db \
    GATEWAY_MAPPINGS_DIR=/app/mappings
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . && useradd --system --uid 10001 gateway && mkdir /data && chown gateway /data
COPY mappings ./mappings
COPY fixtures ./fixtures
USER gateway
VOLUME ["/data"]
EXPOSE 8000 2575
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["gateway", "serve"]
