# syntax=docker/dockerfile:1
# Railcar image: `railcar serve` (sidecar, default), `railcar consume`, `railcar scan`, `railcar inject`.
# Not built in CI here (no Docker engine); `hadolint Dockerfile` runs in tests/test_helm.py.
#   docker build -t railcar:0.1.0 .
#   docker run --rm -p 8787:8787 -e RAILCAR_SERVER_HOST=0.0.0.0 -e RAILCAR_UPSTREAM_BASE_URL=... railcar:0.1.0

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Optional pins: a constraints file (e.g. `pip freeze` of a green CI run) passed as a build arg.
ARG PIP_CONSTRAINT=""
ENV PIP_CONSTRAINT=${PIP_CONSTRAINT}
WORKDIR /src
RUN python -m venv /opt/railcar
ENV PATH=/opt/railcar/bin:$PATH
COPY pyproject.toml README.md ./
COPY railcar ./railcar
# The same install command CI uses (`pip install .` from the repository root), into a venv copied below; every
# dependency ships manylinux wheels for CPython 3.11, so no compiler is needed.
RUN pip install . \
    && python -m compileall -q /opt/railcar/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="railcar" \
      org.opencontainers.image.description="Streaming guard sidecar for LLM agents" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/railcar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RAILCAR_SERVER_PORT=8787
# Numeric uid/gid so Kubernetes runAsNonRoot can verify it; no home directory or shell needed.
RUN groupadd --system --gid 10001 railcar \
    && useradd --system --uid 10001 --gid railcar --no-create-home --shell /usr/sbin/nologin railcar \
    && mkdir -p /var/lib/railcar/spool /var/lib/railcar/fileset \
    && chown -R 10001:10001 /var/lib/railcar
COPY --from=build /opt/railcar /opt/railcar
# Runs with a read-only root filesystem: only /tmp, the spool and the fileset need to be writable (volumes).
WORKDIR /var/lib/railcar
USER 10001:10001
EXPOSE 8787
# /healthz on the loopback port of whichever command runs (serve: 8787; consume: RAILCAR_SERVER_PORT).
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RAILCAR_SERVER_PORT', '8787'), timeout=2)"]
ENTRYPOINT ["railcar"]
CMD ["serve"]
