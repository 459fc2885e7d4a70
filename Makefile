# canonstore: raw NetCDF -> one canonical, pre-normalised Zarr store.  `make` lists the targets.
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
SHELL := /bin/bash

## Variables (override on the command line: make intermediate RECIPE=recipes/my.yaml)
PYTHON ?= python3
VENV   ?= .venv
RECIPE ?= recipes/demo.yaml
SIZE   ?= 1
YEARS  ?= 5
# CPU build of torch (on disk here) unless a GPU is visible; override with TORCH=...
TORCH  ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

PY        := $(VENV)/bin/python
CANON     := $(VENV)/bin/canonstore
EXTRAS    ?=
comma     := ,
# optional extras, comma-separated (make env EXTRAS=mlflow): an environment with other extras is another stamp
ENV_STAMP := $(VENV)/.installed$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
NAME      := $(shell sed -n 's/^name:[[:space:]]*\([A-Za-z0-9._-]*\).*/\1/p' $(RECIPE) 2>/dev/null)
STORE     ?= data/intermediate/$(NAME).zarr
EXPORT    ?= data/export/$(NAME)
DEMO_RAW  := data/raw/demo
DEMO_STAMP := $(DEMO_RAW)/.size-$(SIZE)-years-$(YEARS)

# `make bench` has its own dataset; SIZE given on the command line scales it too (default 4: 64x128).
BENCH_SIZE  := $(if $(filter command line environment,$(origin SIZE)),$(SIZE),4)
BENCH_RAW   := data/raw/bench
BENCH_STAMP := $(BENCH_RAW)/.size-$(BENCH_SIZE)
BENCH_STORE := data/intermediate/bench.zarr
BENCH_ONE   := data/intermediate/bench-1shard.zarr
WORKERS     ?= 2

# Training: MODEL and CONFIG pick the run; the others override the config's keys when given, and
# SET="unet.depth=1 epochs=2" any keys (the same SET for train, forecast and evaluate finds the same run;
# settings are split at spaces, so write values without them: channels=[t2m,z500]).
MODEL  ?= unet
CONFIG ?= configs/default.yaml
NPROC  ?= 1
TRAIN_ARGS = --config $(CONFIG) --model $(MODEL) --store $(STORE) \
	$(if $(EPOCHS),--set epochs=$(EPOCHS)) $(if $(LR),--set lr=$(LR)) $(if $(LEAD),--set 'lead=$(LEAD)') \
	$(if $(ROLLOUT),--set rollout=$(ROLLOUT)) $(if $(INIT),--set init=$(INIT)) $(if $(SCHEDULER),--set scheduler=$(SCHEDULER)) $(if $(LOADER),--set loader=$(LOADER)) \
	$(if $(filter command line environment,$(origin WORKERS)),--set workers=$(WORKERS)) \
	$(foreach s,$(SET),--set '$(s)')
# NPROC > 1: one process per GPU (or CPU share) under torchrun, DistributedDataParallel.
TRAIN_CMD = $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m canonstore,$(CANON))

# Where the build runs: SCHEDULER=tcp://host:8786 (an address; train's SCHEDULER=cosine is not one),
# SCHEDULER_FILE=scheduler.json (dask-jobqueue, dask-mpi) or WORKERS=N (a local dask cluster); else in-process.
BUILD_ON = $(if $(findstring ://,$(SCHEDULER)),--scheduler $(SCHEDULER)) \
	$(if $(SCHEDULER_FILE),--scheduler-file $(SCHEDULER_FILE)) \
	$(if $(and $(filter command line environment,$(origin WORKERS)),$(if $(findstring ://,$(SCHEDULER))$(SCHEDULER_FILE),,x)),--workers $(WORKERS))

# The store depends on the recipe and every raw file it names (listed by the CLI once installed).
ifeq ($(RECIPE),recipes/demo.yaml)
INPUTS := $(DEMO_STAMP)
else
INPUTS := $(if $(wildcard $(CANON)),$(shell $(CANON) sources $(RECIPE) 2>/dev/null))
endif

.PHONY: help env data intermediate export inspect verify train forecast evaluate bench bench-compressed bench-build bench-remote bench-remote-s3rver bench-peers lint test test-fast clean distclean

help: ## list the targets
	@echo "usage: make [target] [RECIPE=...] [STORE=...] [SIZE=...] [MODEL=unet|mlp|persistence|climatology]"
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-14s %s\n", $$1, $$2}'

env: $(ENV_STAMP) ## create .venv and install canonstore (once; redone when pyproject.toml changes)

$(ENV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "installing $(TORCH), then canonstore[dev,torch$(if $(EXTRAS),$(comma)$(EXTRAS))] into $(VENV) (minutes the first time)"
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,torch$(if $(EXTRAS),$(comma)$(EXTRAS))]"
	touch $@

data: $(DEMO_STAMP) ## generate the embedded demo raw NetCDF in data/raw/demo (SIZE scales the grid)

$(DEMO_STAMP): preprocess/demo.py | $(ENV_STAMP)
	$(CANON) demo-data $(DEMO_RAW) --size $(SIZE) --years $(YEARS)
	touch $@

intermediate: $(STORE)/manifest.json ## build the store from RECIPE (skipped when unchanged; WORKERS=N or SCHEDULER=tcp://.. for dask)

# The manifest is written last, inside the store, and the store appears by one rename: if the
# manifest exists the store is complete. `touch` because an unchanged build writes nothing.
$(STORE)/manifest.json: $(RECIPE) $(INPUTS) | $(ENV_STAMP)
	$(CANON) build $(RECIPE) --out $(STORE) --resume $(BUILD_ON)
	touch $@

inspect: $(STORE)/manifest.json ## summarise the store: channels, stats, splits, layout, provenance
	$(CANON) inspect $(STORE)

verify: $(STORE)/manifest.json ## recompute the store's checksums, check its schema and that inputs are unchanged
	$(CANON) verify $(STORE) --inputs

export: $(EXPORT)/meta.json ## the store's train/val/test as plain .npy files + meta.json in data/export/<name>/

$(EXPORT)/meta.json: $(STORE)/manifest.json
	$(CANON) export $(STORE) --to npy $(EXPORT) --overwrite

# A run's folder is named by a hash of its config and store (the CLI works it out), so these two
# are phony: `canonstore train` itself skips a finished run and resumes an interrupted one.
train: $(STORE)/manifest.json ## train MODEL into runs/<run>/ (CONFIG EPOCHS LR LEAD ROLLOUT INIT LOADER WORKERS SCHEDULER NPROC SET)
	$(TRAIN_CMD) train $(TRAIN_ARGS)

forecast: train ## MODEL's best-checkpoint predictions of the test split, physical units: forecasts/<run>/test.zarr (STEPS)
	$(CANON) forecast $(TRAIN_ARGS) $(if $(STEPS),--steps $(STEPS))

evaluate: train ## forecast + score MODEL's best checkpoint on the test split, in physical units: scores/<run>.json (STEPS)
	$(CANON) evaluate $(TRAIN_ARGS) $(if $(STEPS),--steps $(STEPS))

bench: $(BENCH_STORE)/manifest.json $(BENCH_ONE)/manifest.json ## loader benchmark (SIZE, WORKERS): table + bench/results/loader.{json,png}
	$(PY) bench/loader.py $(BENCH_STORE) --one-shard $(BENCH_ONE) --workers $(WORKERS) --results bench/results

bench-compressed: $(BENCH_STORE)/manifest.json ## compressed frames decoded into the batch buffers vs the memmap, cold and warm: bench/results/compressed-layout.json
	$(PY) bench/compressed_layout.py $(BENCH_STORE) --batch-size 32 --workers $(WORKERS) --results bench/results

bench-build: | $(ENV_STAMP) ## build MB/s, CPU s per GB and peak RSS at 3 input sizes, 1 vs many shards, vs the raw read and a durable write: bench/results/build.json
	$(PY) bench/build.py --results bench/results

bench-remote: | $(ENV_STAMP) ## Zarr sources: build from local Zarr vs NetCDF vs moto's S3 server, bytes fetched for a level/time subset: bench/results/remote.json
	$(PY) bench/remote.py --results bench/results

S3RVER := bench/.s3rver/node_modules/.bin/s3rver
$(S3RVER):
	npm install --no-save --prefix bench/.s3rver s3rver@3.7.1

bench-remote-s3rver: $(S3RVER) | $(ENV_STAMP) ## pull vs a plain parallel GET against s3rver (ranges served from the file): bench/results/remote-pull-s3rver.json
	$(PY) bench/remote.py --pull-only --server s3rver --results bench/results

# The peers live in their own venvs, never in canonstore's: anemoi-datasets pins zarr-python 2, zarrs needs 3,
# zarr-python 3.2+ and insitubatch need Python >= 3.12 (PEERS_PYTHON312: the first that runs of python3.14..3.12
# on PATH, then pyenv's installs, which this machine has beside its 3.11; without one their rows say so).
PEERS_ENVS := bench/.venv-peers/.installed bench/.venv-peers-zarr3/.installed bench/.venv-peers-mllam/.installed \
	bench/.venv-peers-py312/.installed
PEER_SIZES ?= s m l
PEER_REPEATS ?= 3
PEERS_PYTHON312 ?= $(shell for p in python3.14 python3.13 python3.12 $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python3; do \
	$$p -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null && command -v $$p && break; done)

bench-peers: $(PEERS_ENVS) | $(ENV_STAMP) ## canonstore vs anemoi-datasets, insitubatch, zarr-python, zarrs, tensorstore, xbatcher, NetCDF; mllam-data-prep builds; 3 sizes, warm and cold (PEER_SIZES PEER_REPEATS)
	$(PY) bench/peers/run.py --sizes $(PEER_SIZES) --workers $(WORKERS) --repeats $(PEER_REPEATS) \
		--results bench/results/peers

bench/.venv-peers/.installed: bench/peers/requirements-anemoi.txt
	$(PYTHON) -m venv bench/.venv-peers
	bench/.venv-peers/bin/pip install -q "$(TORCH)" -r $<
	touch $@

bench/.venv-peers-zarr3/.installed: bench/peers/requirements-zarr3.txt
	$(PYTHON) -m venv bench/.venv-peers-zarr3
	bench/.venv-peers-zarr3/bin/pip install -q "$(TORCH)" -r $<
	touch $@

bench/.venv-peers-mllam/.installed: bench/peers/requirements-mllam.txt
	$(PYTHON) -m venv bench/.venv-peers-mllam
	bench/.venv-peers-mllam/bin/pip install -q -r $<
	touch $@

# no torch here: these rows are numpy batches (insitubatch's own loop; zarr-python in forked processes)
bench/.venv-peers-py312/.installed: bench/peers/requirements-py312.txt
	@if [ -z "$(PEERS_PYTHON312)" ]; then \
		echo "no Python >= 3.12 (PEERS_PYTHON312): the zarr-python 3.4 and insitubatch rows will say so"; \
	else \
		$(PEERS_PYTHON312) -m venv bench/.venv-peers-py312 && \
		bench/.venv-peers-py312/bin/pip install -q -r $< && touch $@; \
	fi

$(BENCH_STAMP): preprocess/demo.py | $(ENV_STAMP)
	rm -rf $(BENCH_RAW)
	$(CANON) demo-data $(BENCH_RAW) --size $(BENCH_SIZE) --years 2
	touch $@

$(BENCH_STORE)/manifest.json: recipes/bench.yaml $(BENCH_STAMP) | $(ENV_STAMP)
	$(CANON) build recipes/bench.yaml --out $(BENCH_STORE) --resume
	touch $@

# The same data as ONE shard file: the benchmark's check that shards cost the loader nothing.
$(BENCH_ONE)/manifest.json: recipes/bench.yaml $(BENCH_STAMP) | $(ENV_STAMP)
	sed -e 's/shard_mb: 64/shard_mb: 1048576/' -e 's|\.\./data/raw/bench|$(CURDIR)/data/raw/bench|' recipes/bench.yaml > $(BENCH_ONE).yaml
	$(CANON) build $(BENCH_ONE).yaml --out $(BENCH_ONE) --resume
	touch $@

lint: $(ENV_STAMP) ## ruff: lint and check the formatting (fix with: ruff check --fix . && ruff format .)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(ENV_STAMP) ## run the test suite (all of it: CI runs this), one pytest worker per core, a file per worker
	$(PY) -m pytest -q -n auto --dist loadfile

test-fast: $(ENV_STAMP) ## the edit loop: every test but the slow ones (kills, clusters, torchrun, packaging, make, bench)
	$(PY) -m pytest -q -n auto --dist loadfile -m "not slow"

clean: ## remove generated data and stores (keeps .venv)
	rm -rf data/intermediate data/export data/raw/demo data/raw/bench .pytest_cache build dist

distclean: clean ## also remove the virtual environment
	rm -rf $(VENV)
