# make demo: set up, export a zoo model, compile it, print the report summary.
# make test: set up, run the test suite (includes real end-to-end compiles).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := build/demo

.PHONY: setup demo test lint bench clean chromium cross-toolchain

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e ".[models,search,test]"
	touch $@

demo: $(STAMP)
	@mkdir -p $(DEMO)
	$(BIN)/edgec zoo export resnet18 -o $(DEMO)/resnet18.onnx --force
	$(BIN)/edgec compile $(DEMO)/resnet18.onnx -o $(DEMO)/resnet18 --force --bench-budget 5

test: $(STAMP) chromium cross-toolchain
	$(BIN)/python -m pytest -q -ra --durations=15

# Headless Chromium for the report screenshot test (tests/report/test_html.py); apt is shared
# with other setup steps, hence the lock. Skipped when chromium is already installed.
chromium:
	@command -v chromium >/dev/null || flock /tmp/edgec-apt.lock sh -c \
	  'command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)'

# The arm64 cross toolchain and qemu-user (deploy bundles, emulated verification); Debian packages.
CROSS_PKGS := g++-aarch64-linux-gnu qemu-user
cross-toolchain:
	@command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null || \
	  flock /tmp/edgec-apt.lock sh -c 'apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(CROSS_PKGS)'

lint: $(STAMP)
	$(BIN)/ruff check edgec tests bench
	$(BIN)/ruff format --check edgec tests bench

clean:
	rm -rf $(VENV) build .pytest_cache
