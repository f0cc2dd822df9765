# syntax=docker/dockerfile:1
# Image of the collector (and of its client, `iot-client`, as the thesis shipped
# them together). Two stages: the first builds every wheel the project needs,
# with a compiler at hand for platforms where PyPI has no binary wheel; the
# second installs those wheels only, so no compiler, header or build cache
# reaches the final image.
#
# The image keeps the collector's own default store (`sqlite`, under /app/data)
# so `docker run -p 5683:5683/udp iot-collector` works alone; docker-compose.yml
# and the Helm chart select Elasticsearch explicitly (COLLECTOR_SINK=elasticsearch).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# pip checks PyPI against the system's CA bundle rather than its own copy, so a
# build behind a TLS proxy works when the builder mounts its bundle there
# (scripts/image.sh does); the build stage's environment ends with the stage.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies' wheels first, from pyproject.toml alone, so that a source or
# README edit rebuilds only the project's own wheel (no PyPI round trip).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        >/tmp/requirements.txt \
    && pip wheel --wheel-dir /wheels -r /tmp/requirements.txt
COPY README.md ./
COPY coap ./coap
COPY collector ./collector
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ARG UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PROMETHEUS_MULTIPROC_DIR=/run/iot-collector/prometheus \
    COLLECTOR_HOST=0.0.0.0 \
    COLLECTOR_PORT=5683 \
    COLLECTOR_METRICS_PORT=9100 \
    COLLECTOR_SQLITE_PATH=/app/data/events.db
# The wheels are bind-mounted from the build stage, never copied into a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels iot-collector \
    && groupadd --system --gid "${UID}" collector \
    && useradd --system --uid "${UID}" --gid "${UID}" --home-dir /app \
       --no-create-home --shell /usr/sbin/nologin collector \
    && mkdir -p /app/data "${PROMETHEUS_MULTIPROC_DIR}" \
    && chown -R "${UID}:${UID}" /app "${PROMETHEUS_MULTIPROC_DIR}"
WORKDIR /app
USER 10001:10001
# CoAP on UDP; Prometheus metrics and /healthz, /readyz on TCP.
EXPOSE 5683/udp 9100/tcp
# slim has no curl: ask /healthz with the interpreter already in the image.
# urlopen raises on connection errors and on any non-2xx answer, so the exit
# status is the verdict.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('COLLECTOR_METRICS_PORT', '9100'), timeout=2)"]
# The supervisor handles SIGTERM itself: it drains within --drain-timeout.
STOPSIGNAL SIGTERM
CMD ["iot-collector", "serve"]
