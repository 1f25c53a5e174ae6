# streamer: Kafka consumer that embeds astronomical alert light curves.
#
#   docker build -t streamer:0.1.0 .
#   docker run --read-only --tmpfs /tmp -v streamer-history:/var/lib/streamer \
#     -v streamer-cache:/var/cache/streamer -e STREAMER_BOOTSTRAP_SERVERS=... \
#     -e STREAMER_INPUT_TOPICS=... streamer:0.1.0
#
# Two stages: "builder" resolves and installs everything into a virtual environment at
# /opt/venv; the final stage copies only that environment onto a fresh slim image (no pip
# caches, no build tools, no sources). Every dependency ships x86-64 manylinux wheels for
# CPython 3.11 (numpy, onnxruntime, pyarrow, confluent-kafka, fastavro, cavro), so no
# compiler is needed in either stage (on arm64 cavro is left out and fastavro decodes).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The build front-end and back-end, pinned; the project is then built without isolation
# against exactly these.
RUN pip install --no-cache-dir pip==25.3 setuptools==80.9.0 wheel==0.45.1

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that this layer is reused while only the
# sources change.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt

COPY README.md ./
COPY streamer ./streamer
RUN pip install --no-cache-dir --no-deps --no-build-isolation .

# streamer.records reads <site-packages>/schemas/embedding.avsc (the repository's top-level
# schemas/ next to the package); pyproject.toml does not package it, so ship it here.
COPY schemas /opt/venv/lib/python3.11/site-packages/schemas

# Everything is byte-compiled now: the final image's root filesystem is read-only.
RUN python -m compileall -q /opt/venv/lib/python3.11/site-packages \
    && streamer --version \
    && python -c 'from streamer.records import record_schema; record_schema()'


FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="streamer" \
      org.opencontainers.image.description="Real-time ML embeddings of astronomical alert streams" \
      org.opencontainers.image.licenses="MIT"

# A fixed numeric UID/GID (matches runAsUser/fsGroup in deploy/base) owning only the two
# volume mount points: the history (SQLite) and the HuggingFace cache.
RUN groupadd --system --gid 10001 streamer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin streamer \
    && mkdir -p /var/lib/streamer /var/cache/streamer/hf \
    && chown -R 10001:10001 /var/lib/streamer /var/cache/streamer

COPY --from=builder /opt/venv /opt/venv

# Writable locations are /var/lib/streamer, /var/cache/streamer and /tmp only (volumes in
# Kubernetes, with readOnlyRootFilesystem). HOME points at /tmp for libraries that insist
# on ~/.cache.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/var/cache/streamer \
    HF_HOME=/var/cache/streamer/hf \
    HF_HUB_DISABLE_TELEMETRY=1 \
    STREAMER_HISTORY_PATH=/var/lib/streamer/history.sqlite3 \
    STREAMER_METRICS_PORT=8000 \
    STREAMER_LOG_FORMAT=json

USER 10001:10001
WORKDIR /var/lib/streamer
VOLUME ["/var/lib/streamer", "/var/cache/streamer"]
EXPOSE 8000

# No curl in the slim image: ask /healthz with the interpreter that is already there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAMER_METRICS_PORT', '8000') + '/healthz', timeout=4)"]

ENTRYPOINT ["streamer"]
CMD ["run"]
