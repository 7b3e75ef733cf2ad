# `make run` and `make test` each build .venv (once) and install what they need.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-slow test-long lint bench clean

$(BIN)/bigmodel-ray: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, pinned: this pin is a local CPU wheel; anything else downloads a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/bigmodel-ray
	$(BIN)/bigmodel-ray run jobs/quickstart.yaml

test: $(BIN)/bigmodel-ray
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

lint: $(BIN)/bigmodel-ray
	$(BIN)/ruff check .
	$(BIN)/python -m bigmodel_ray.spec.reference --check

test-slow: $(BIN)/bigmodel-ray
	$(BIN)/python -m pytest -q -m "slow and not long" --durations=10

test-long: $(BIN)/bigmodel-ray
	$(BIN)/python -m pytest -q -m long --durations=10

bench: $(BIN)/bigmodel-ray
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/ddp_overhead.py

clean:
	rm -rf $(VENV) runs
