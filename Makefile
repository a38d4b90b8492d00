# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
# Each creates what it needs: a virtual environment with torch, the package, and data.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU machines here install this pair from a local cache; override for other platforms.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint typecheck check bench zoo clean gpu-check

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,slurm,explain]'
	# torchattacks (the benchmarks' and tests' reference PGD) pins requests~=2.25.1, which
	# sends pip's resolver into an endless backtrack beside huggingface_hub and ray: its
	# own imports need only torch, numpy, scipy, tqdm and requests, all installed above
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

setup: $(BIN)/.installed
	bash scripts/system_deps.sh

demo: setup
	$(BIN)/robust-transfer demo

test: setup
	bash scripts/system_deps.sh --test
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

# mypy on the public modules listed in pyproject.toml ([tool.mypy] files)
typecheck: setup
	$(BIN)/mypy

# what CI runs first: style and types, then `make test`
check: lint typecheck

bench: setup
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# GPU acceptance check (about 6 minutes on one H200, estimated; --max-seconds 360 skips parts
# not started by then): writes gpu_check.json; refuses
# (exit 2) where no GPU is visible. `python scripts/gpu_check.py --cpu-smoke` checks it on a CPU.
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py --out gpu_check.json

# retrain the embedded zoo (about an hour on a 2-core CPU); see scripts/train_zoo.sh
zoo: setup
	RT=$(BIN)/robust-transfer bash scripts/train_zoo.sh --overwrite

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
