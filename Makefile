# `make run` and `make test` each bootstrap .venv themselves (only Python 3.11+ and make needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck check install clean bench chaos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/flowledger serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The fault drill: 1,000 runs over three instances while PostgreSQL, NATS and the instances are
# broken on a seeded schedule (docs/operations.md#the-fault-drill). About 9 minutes.
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.drill --runs 1000 --seed 7

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) build dist *.egg-info
