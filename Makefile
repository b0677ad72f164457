# One command to run the pipeline, one to test it; both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
RULES ?= rules

.PHONY: setup up test test-fast bench docs lint clean

setup:
	./scripts/bootstrap.sh

up: setup
	$(VENV)/bin/fimstream up --rules $(RULES)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Unit tests only: no broker, no eBPF.
test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not root and not slow" $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/fimstream bench all

docs: setup
	$(VENV)/bin/fimstream rules docs -o docs/fields.md

clean:
	rm -rf $(VENV) .pytest_cache .fimstream
