# Two entry points for a newcomer: `make demo` and `make test`. Both set up .venv first.
# torch is installed on its own, before anything that depends on it, so that pip takes the local
# CPU build (torch==2.13.0) instead of resolving a multi-GB CUDA wheel from the index.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2
# LLaMA-Factory, isolated (--no-deps, its own folder, never imported by dataprep): the interop test
# runs its data converter over our export. What that converter imports is already in the venv.
LLAMAFACTORY := $(VENV)/llamafactory/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

$(LLAMAFACTORY): $(STAMP)
	$(BIN)/python -m pip install -q --no-deps --target $(VENV)/llamafactory llamafactory==0.9.5
	touch $@

demo: setup
	$(BIN)/dataprep run configs/spo.yaml --out out/spo
	$(BIN)/dataprep run configs/docqa.yaml --out out/docqa
	$(BIN)/dataprep run configs/hotel.yaml --out out/hotel
	@echo
	@echo "Splits, rejects, manifests and reports are under out/{spo,docqa,hotel}/"

test: setup $(LLAMAFACTORY)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/bench_run.py

clean:
	rm -rf out .pytest_cache
