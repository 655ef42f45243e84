# mcp-auth-sidecar: the two commands a newcomer needs are `make run` and `make test`.
# Everything installs itself into .venv on first use (Python packages from PyPI,
# redis-server through apt when the machine has none).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test unit integration chart lint typecheck bench bench-quick clean redis-server

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[test,demo]'
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

test: $(STAMP) redis-server lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider tests

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
	@$(PY) -m pip install --quiet -e '.[test,demo,bench]'
	$(PY) -m bench

bench-quick: $(STAMP)
	@$(PY) -m pip install --quiet -e '.[test,demo,bench]'
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
