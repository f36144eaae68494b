# logitsearch: `docker build -t logitsearch .` then
# `docker run --stop-timeout 60 -p 6340:6340 -v logitsearch-data:/data -e LOGITSEARCH_API_KEY=... logitsearch`
# (--stop-timeout: Docker's default 10 s covers the drain, LOGITSEARCH_DRAIN_SECONDS=5, and a small snapshot)
# (or `docker compose up`, see docker-compose.yml). Both stages use the same base so the venv's
# interpreter path (/usr/local/bin/python3.11) is valid in the final stage.
# `--build-arg EXTRAS=ray` adds pyproject's optional dependencies of that name (Ray, for the compose
# file's `cluster` profile and docs/scaling.md); empty, the default, builds the image without them.
ARG PYTHON_IMAGE=python:3.11.9-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The build context is an allow-list (.dockerignore): pyproject.toml, README.md and the packages.
COPY . .
# The README's install, unchanged: the dependencies come from pyproject.toml and nowhere else.
# No EXTRAS: exactly `pip install .`; EXTRAS=ray: `pip install . ".[ray]"` (one install, with the extra).
RUN pip install . ${EXTRAS:+".[$EXTRAS]"}

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    LOGITSEARCH_DATA_DIR=/data \
    LOGITSEARCH_HOST=0.0.0.0 \
    LOGITSEARCH_PORT=6340
RUN groupadd --system --gid 10001 logitsearch \
    && useradd --system --uid 10001 --gid logitsearch --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin logitsearch \
    && mkdir /data /opt/numba-cache \
    && chown logitsearch:logitsearch /data /opt/numba-cache
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
# numba's machine code, compiled into the image (issue 16): the warm-up runs every kernel once, so a new
# container loads them from NUMBA_CACHE_DIR instead of compiling (~5 s before the first search).
# Written by the service user: numba uses a cache directory only where it may write, and a host whose
# CPU differs from the build machine's adds its own entries there.
RUN ["python", "-m", "service.warmup"]
WORKDIR /data
# Declared after the chown so a fresh named volume starts out owned by the service user.
VOLUME ["/data"]
EXPOSE 6340
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LOGITSEARCH_PORT', '6340'), timeout=4)"]
# uvicorn drains open requests on SIGTERM, then the app's lifespan snapshots the indexes.
STOPSIGNAL SIGTERM
CMD ["logitsearch", "serve"]
