# Each target bootstraps the virtual environment it needs.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint fmt bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Browser-like traffic fills the dashboard; `make demo DEMO_ARGS=` runs it quiet.
DEMO_ARGS ?= --traffic

demo: $(STAMP)
	$(BIN)/warmproxy demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/ruff check proxy warmer tests bench
	$(BIN)/ruff format --check proxy warmer tests bench
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check proxy warmer tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format proxy warmer tests bench
	$(BIN)/ruff check --fix proxy warmer tests bench

bench: $(STAMP)
	$(BIN)/python bench/hit_path.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
