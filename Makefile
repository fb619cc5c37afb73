# make demo: set up, export a zoo model, compile it, print the report summary.
# make test: set up, run the test suite (includes real end-to-end compiles).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[models,search,test]"
	touch $@

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/edgec zoo export resnet18 -o $(DEMO)/resnet18.onnx --force
	$(BIN)/edgec compile $(DEMO)/resnet18.onnx -o $(DEMO)/resnet18 --force --bench-budget 5

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15

lint: $(STAMP)
	$(BIN)/ruff check edgec tests bench
	$(BIN)/ruff format --check edgec tests bench

clean:
	rm -rf $(VENV) build .pytest_cache
