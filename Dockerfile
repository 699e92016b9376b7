# The bot as a container: `trt serve --migrate` (ops/start.sh), migrations then service.
# Build: docker build -t trt .   Run: docker run --env-file .env -p 8080:8080 trt
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ENVIRONMENT=production \
    PORT=8080

WORKDIR /app

# The source stays where it is (an editable install): migrations, flows.yaml and the
# price files are found next to the code, as in development.
COPY pyproject.toml README.md alembic.ini flows.yaml ./
COPY alembic ./alembic
COPY engine ./engine
COPY flows ./flows
COPY kie ./kie
COPY pricing ./pricing
COPY storage ./storage
COPY trt ./trt
COPY ops/start.sh ./ops/start.sh

# Our modules are compiled once here: PYTHONDONTWRITEBYTECODE keeps a running container
# from writing bytecode, so without this every start compiles them again.
RUN pip install -e . \
    && python -m compileall -q engine flows kie pricing storage trt alembic \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin trt \
    && mkdir -p /app/data \
    && chown trt /app/data

USER trt
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=4)"

# SIGTERM reaches `trt serve` itself (exec in start.sh), which shuts down gracefully.
STOPSIGNAL SIGTERM
CMD ["sh", "ops/start.sh"]
