# Every job runs inside .venv, created from requirements.txt by one pip install.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: venv demo test test-fast lint train-cifar10 train-celeba64 train-fashion sample evaluate benchmarks ablation fast-mode-quality clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

## The main job on the built-in dataset: no download, a few CPU minutes. A second `make demo` starts afresh:
## --overwrite moves the previous runs/demo aside to runs/demo.old-<time> (nothing is deleted; `make clean`
## removes runs/). To continue a run instead: python train.py --config configs/demo.yaml --run-dir runs/demo --resume latest
demo: $(STAMP)
	@if [ -e runs/demo/metrics.jsonl ]; then echo "make demo: runs/demo holds an earlier demo; --overwrite moves it aside to runs/demo.old-<time>"; fi
	$(BIN)/python train.py --config configs/demo.yaml --run-dir runs/demo --overwrite $(ARGS)
	$(BIN)/python sample.py --checkpoint runs/demo --grid runs/demo/final_samples.png --attention-maps runs/demo/final_attention.png

## The test suite (CPU, tiny configs) on one pytest-xdist worker per core (JOBS=1 runs it in one process); the
## 20 slowest tests are listed at the end. pytest's exit status 5 means nothing was collected: a failure here.
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: $(STAMP)
	@$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal --durations=20 $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is missing or mis-configured" >&2; exit 1; fi; \
	exit $$rc

## The inner loop: every test not marked slow (about a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(JOBS) --dist worksteal -m "not slow" $(ARGS)

## Lint and format check (rules in pyproject.toml); CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

train-cifar10: $(STAMP)
	$(BIN)/python train.py --config configs/cifar10.yaml --run-dir runs/cifar10 $(ARGS)

train-celeba64: $(STAMP)
	$(BIN)/python train.py --config configs/celeba64.yaml --run-dir runs/celeba64 $(ARGS)

train-fashion: $(STAMP)
	$(BIN)/python train.py --config configs/fashion_mnist.yaml --run-dir runs/fashion_mnist $(ARGS)

benchmarks: $(STAMP)
	$(BIN)/python -m benchmarks.attention_block $(ARGS)

## Experiments behind docs/ablation.md and docs/fast_mode_quality.md: hours of CPU; finished runs are reused.
ARMS := none,g8,g16,g32,d8,d16,gd8,gd16
ablation: $(STAMP)
	$(BIN)/python -m experiments.ablation run --config configs/ablation_coherence.yaml --arms $(ARMS) --seeds 0,1,2 --jobs 2 --out runs/ablation_coherence
	$(BIN)/python -m experiments.ablation run --config configs/ablation_fashion.yaml --arms $(ARMS) --seeds 0,1,2 --jobs 2 --out runs/ablation_fashion
	$(BIN)/python -m experiments.ablation report runs/ablation_coherence runs/ablation_fashion --report docs/ablation.md --figures docs/ablation

fast-mode-quality: $(STAMP)
	$(BIN)/python -m experiments.fast_mode_quality run --seeds 0,1,2 --jobs 2 --out runs/fast_mode_quality
	$(BIN)/python -m experiments.fast_mode_quality report runs/fast_mode_quality --report docs/fast_mode_quality.md

clean:
	rm -rf runs .pytest_cache
