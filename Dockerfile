# syntax=docker/dockerfile:1
#
# mcp-auth-sidecar container image.
#
#   docker build -t mcp-auth-sidecar:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t registry.example.com/mcp-auth-sidecar:0.1.0 --push .
#
# Run (configuration by environment, a mounted YAML file, or both; the environment wins):
#
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e MCP_SIDECAR_UPSTREAM=http://host.docker.internal:8000 \
#     -e MCP_SIDECAR_PUBLIC_URL=http://127.0.0.1:8080 \
#     mcp-auth-sidecar:0.1.0
#
#   docker run --rm -p 8080:8080 \
#     -v "$PWD/config.yaml:/etc/mcp-auth-sidecar/config.yaml:ro" \
#     -e MCP_SIDECAR_CONFIG=/etc/mcp-auth-sidecar/config.yaml \
#     mcp-auth-sidecar:0.1.0
#
#   docker run --rm --entrypoint mcp-auth-sidecar mcp-auth-sidecar:0.1.0 keygen
#   docker run --rm -v "$PWD/config.yaml:/etc/mcp-auth-sidecar/config.yaml:ro" \
#     --entrypoint mcp-auth-sidecar mcp-auth-sidecar:0.1.0 check-config --config /etc/mcp-auth-sidecar/config.yaml

ARG PYTHON_VERSION=3.12
# Any Debian-like base with python3 (>= 3.11) and its venv module; `make image` builds on a minimal Debian made
# with debootstrap (python3, python3-venv, python-is-python3) instead of pulling this one.
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim
# Compilers, for platforms without wheels of hiredis/uvloop/cryptography; empty skips apt entirely.
ARG BUILD_PACKAGES=build-essential

# --- build: compile wheels if a platform lacks them, install into a self-contained virtualenv ---
FROM ${BASE_IMAGE} AS build
ARG BUILD_PACKAGES

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Compilers only here: hiredis, uvloop and cryptography ship wheels for amd64/arm64, but not for
# every platform buildx may target.
RUN if [ -n "$BUILD_PACKAGES" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $BUILD_PACKAGES \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# UV_SYSTEM_CERTS: trust the build's system certificate store (a corporate proxy's root mounted at
# /etc/ssl/certs is honoured), as pip and apt do.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_SYSTEM_CERTS=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Installed from the lock, exactly the versions the test suite passed with (`uv sync --locked` refuses to
# run when uv.lock and pyproject.toml disagree). uv itself is the version the lock pins.
COPY pyproject.toml uv.lock README.md ./
COPY sidecar ./sidecar
# `fast` adds uvloop; `--no-dev` leaves out the repository's tools (uv itself); `--no-editable` makes a plain
# install, so the final image needs no source tree. Bytecode is compiled here (UV_COMPILE_BYTECODE) because
# the root filesystem is read-only at run time.
# uv goes into a virtualenv of its own: a distribution's python refuses pip installs into itself (PEP 668).
RUN python -m venv /opt/uv \
 && /opt/uv/bin/pip install --quiet "uv==$(python -c 'import tomllib; print(next(p["version"] for p in tomllib.load(open("uv.lock","rb"))["package"] if p["name"] == "uv"))')" \
 && /opt/uv/bin/uv sync --locked --no-dev --no-editable --extra fast \
 && /opt/venv/bin/mcp-auth-sidecar --version

# --- runtime: the slim base, the virtualenv, an unprivileged user; no compilers, no pip ---
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="mcp-auth-sidecar" \
      org.opencontainers.image.description="Auth reverse proxy for MCP servers: bearer gate or OAuth broker, streaming" \
      org.opencontainers.image.licenses="Apache-2.0"

# The same uid/gid the Helm chart's securityContext uses (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin sidecar \
 && mkdir -p /etc/mcp-auth-sidecar
# The base image's own pip/setuptools are not needed at run time.
RUN python -m pip uninstall -y pip setuptools wheel || true

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# 8080: clients (listen); 9090: Prometheus metrics (metrics_listen).
EXPOSE 8080 9090

USER 10001:10001
WORKDIR /tmp

# Docker's own health check (Kubernetes uses the chart's probes on the same endpoint instead).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

# Settings: MCP_SIDECAR_<KEY> variables and/or a YAML file named by --config or MCP_SIDECAR_CONFIG
# (mount it at /etc/mcp-auth-sidecar/config.yaml). The process handles SIGTERM itself (graceful drain).
ENTRYPOINT ["mcp-auth-sidecar", "serve"]
