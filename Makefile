# lotto: `make demo` and `make test` each do all the set-up they need on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data demo pipeline test lint bench clean

setup: $(STAMP)

# extras: search = optuna, for `lotto search --controller tpe|nsga2` and their tests;
# device = executorch, for `lotto bench --device xnnpack|adb` and their tests;
# tensorboard, for run.tensorboard=true and its test.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,onnx,ray,search,device,tensorboard]'
	touch $(STAMP)

data:
	@if [ -f $(FMNIST) ]; then \
		echo "Fashion-MNIST: found under $(dir $(FMNIST))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get install -y -q dataset-fashion-mnist || \
		(apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
		     "or point data.root at the idx files, or pass data.download=true"; \
		exit 1; \
	fi

# The main job: LeNet-300-100 on Fashion-MNIST, 15 rounds at 20%, with both controls.
demo: setup data
	$(BIN)/lotto lottery --prune-rate 0.2 --rounds 15 --workers 2 --name demo

# The MobileNetV3 recipe (search -> NetAdapt -> train from scratch) against width multipliers at
# equal Pixel-1 latency: configs/pipeline.yaml (2 targets x 6 methods x 3 seeds on Fashion-MNIST;
# its measured wall time is in docs/pipeline.md). Re-running resumes; runs/pipeline/cpu/.
pipeline: setup data
	$(BIN)/lotto pipeline --name cpu

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check lotto tests scripts

# Speed and latency targets, measured side by side in one run (not timed unit tests).
# controllers at scale on the supernet proxy: the issue's 2,000 samples x 5 seeds take hours on
# 2 cores; `make bench BENCH_SEARCH="--samples 2000 --seeds 5"` runs it
BENCH_SEARCH ?= --samples 200 --seeds 2
bench: setup data
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_latency.py
	$(BIN)/python scripts/bench_parallel.py
	$(BIN)/python scripts/bench_device.py
	$(BIN)/python scripts/bench_startup.py
	$(BIN)/python scripts/bench_search.py $(BENCH_SEARCH)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
