# Dukat: `make install`, `make run` (offline demo), `make test`, `make bench`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel; every later install keeps it with -c.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/dukat serve --demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check gateway worker shared tests bench augment_adam
	$(BIN)/mypy gateway worker shared augment_adam

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .cache build *.egg-info
