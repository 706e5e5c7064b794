# syntax=docker/dockerfile:1
#
# The pipeline worker image: `pipeline` is the entrypoint, a worker on the example topology the
# default command.
#
#   docker build -t pipeline:local .
#   docker run --rm pipeline:local check /etc/pipeline/topologies/ecommerce.yaml
#
# Paths in the image (mount over them to use your own):
#   /etc/pipeline/topologies/   topology files (this repository's topologies/); they name their
#                               schemas as ../avro/..., which resolves to /etc/pipeline/avro/
#   /etc/pipeline/avro/         Avro contracts (this repository's avro/)
#   /etc/pipeline/geoip/        MaxMind databases: not shipped; mount them here and set
#                               GEOIP_CITY_DB / GEOIP_ASN_DB (the example's geo stage is optional)
#   /var/lib/pipeline/          local state (RocksDB tables): a volume, PIPELINE_DATA_DIR
#
# Stopping: the entrypoint is exec form, so `pipeline` is PID 1 and receives SIGTERM itself; it
# finishes, delivers and commits the batch in hand. Give it time (docker stop -t 180, compose
# stop_grace_period, Kubernetes terminationGracePeriodSeconds): a delivery may take up to the
# producer's 120 s delivery timeout when the brokers are slow.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the dependencies and the project wheel in a venv ------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
# (On x86_64 every dependency comes as a manylinux wheel, so the image needs no compiler.)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install -r /tmp/requirements.txt

COPY README.md ./
COPY pipeline ./pipeline
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-deps /wheels/*.whl

# -- runtime ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed numeric uid/gid: Kubernetes' runAsNonRoot can only check a numeric USER, and the
# manifests' fsGroup gives the state volume to this group.
RUN groupadd --system --gid 10001 pipeline \
    && useradd --system --uid 10001 --gid pipeline --no-create-home \
        --home-dir /var/lib/pipeline --shell /usr/sbin/nologin pipeline \
    && install -d -o pipeline -g pipeline -m 0750 /var/lib/pipeline \
    && install -d -m 0755 /etc/pipeline/geoip

COPY --from=builder /opt/venv /opt/venv
COPY avro /etc/pipeline/avro
COPY topologies /etc/pipeline/topologies

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIPELINE_DATA_DIR=/var/lib/pipeline \
    PIPELINE_STORE=rocksdb \
    PIPELINE_WEB_BIND=0.0.0.0 \
    PIPELINE_WEB_PORT=6066

VOLUME ["/var/lib/pipeline"]
EXPOSE 6066
WORKDIR /var/lib/pipeline
USER 10001:10001

# /health: 200 while the worker's fetch loop runs (also while it starts), 503 once it failed or
# is stopping. The image has no curl: Python asks, and fails on anything but a 2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PIPELINE_WEB_PORT', '6066'), timeout=4)"]

ENTRYPOINT ["pipeline"]
CMD ["worker", "/etc/pipeline/topologies/ecommerce.yaml"]
