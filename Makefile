# streamer — developer entry points. `make test` and `make replay` work on a fresh
# machine with Python 3.11+: the first call creates .venv and installs the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format bench-embed bench-decode bench-e2e demo demo-model clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check streamer tests benchmarks
	$(BIN)/ruff format --check streamer tests benchmarks
	$(BIN)/mypy streamer

format: $(STAMP)
	$(BIN)/ruff format streamer tests benchmarks
	$(BIN)/ruff check --fix streamer tests benchmarks

bench-embed: $(STAMP)
	$(BIN)/python benchmarks/embed.py

bench-decode: $(STAMP)
	$(BIN)/python benchmarks/decode.py

bench-e2e: $(STAMP)
	$(BIN)/python benchmarks/e2e.py --memory

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# The service end to end on a local broker. Offline: STREAMER_MODEL_FILE=path/to/atcat_f32.onnx
# (or a stand-in with the published signature: make demo-model, then STREAMER_MODEL_FILE=demo-atcat.onnx).
demo: $(STAMP)
	$(BIN)/python -m streamer.demo

demo-model: $(STAMP)
	$(BIN)/python -m streamer.embed.synthetic atcat demo-atcat.onnx
