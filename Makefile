# Dukat: `make install`, `make run` (offline demo), `make test`, `make bench`, `make lint`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-real bench-peer gpu-check clean browser

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the local CPU wheel; every later install keeps it with -c.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# instructor 1.17 (the newest) caps jiter below 0.15 while openai 3.57 needs 0.16 or newer: taken
	# without its pins (its other dependencies are in the dev extra); its tests run against openai 3.57.
	$(PIP) install -q --no-deps instructor==1.17.0
	# The CPU block kernels of 4bit/8bit (worker/model/cpu_kernels), compiled once here rather than at
	# a model worker's first quantized load; where they cannot be built, it says why (int8 fallback).
	$(BIN)/python -m worker.model.cpu_kernels
	touch $(STAMP)

install: $(STAMP)

# The first run assembles and converts the demo model (Gemma 3 270M, ~2-4 minutes on 2 cores, with
# progress); later runs find it converted under models/ and start in seconds.
run: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/dukat serve --demo

# A headless browser for the /docs page test (tests/support/browser.py); installed when apt-get can
# (root), else that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || \
		echo "chromium is not installed: the /docs browser test will skip"

# Two workers (CI has 2 cores; most tests wait on processes); one module stays on one worker, so its
# servers start once.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests

lint: $(STAMP)
	$(BIN)/ruff check gateway worker shared tests bench augment_adam
	$(BIN)/mypy gateway worker shared augment_adam bench
	$(BIN)/lint-imports

# wrk is the load generator of the throughput rows; installed when apt-get can (root), else the
# bench falls back to httpx (and says so in the table).
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -qq wrk >/dev/null 2>&1 || \
		  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; }; }; } || \
		echo "wrk is not installed: the throughput rows use httpx instead"
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.run

# The real model (Gemma 3 270M) through Dukat: load (first: converts the GGUF) and cached, memory per
# quantization, one stream vs in-process generate, 8 and 16 streams vs one. ~6-10 minutes on 2 cores.
bench-real: $(STAMP)
	$(BIN)/python -m bench.real_model

# Dukat (none/8bit/4bit) against llama.cpp on the same Gemma 3 270M weights, one after the other
# (bench/peer.py; the peer is built by ../shared/peer/prepare.sh .peer, else its rows say how).
bench-peer: $(STAMP)
	$(BIN)/python -m bench.peer

# What only a CUDA machine shows (pinning, bitsandbytes on CUDA, memory back after unload, streams):
# offline, < 8 minutes, one JSON file (bench/results/gpu_check.json). Without CUDA: the CPU-safe part.
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check

clean:
	rm -rf $(VENV) .cache build *.egg-info
