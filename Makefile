# One command for the demo, one for the tests; both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo figure test test-fast test-offline lint format gpu-check pascal-size bench clean-results \
	wheelhouse install-offline gpu-session

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch, torchvision and timm resolve together under the pins (no silent torch upgrade)
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev,crf,slurm]'
	touch $(STAMP)

# the demo's graph of jobs is two seeds wide: jobs of CORES / 2 threads let both seeds run at once
# (1.22-1.30x on 2 cores, two pairs of runs: docs/benchmarks.md, "The demo")
DEMO_THREADS ?= $(shell n=$$(( $(CORES) / 2 )); echo $$(( n > 0 ? n : 1 )))
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --max-threads $(DEMO_THREADS) --printshellcmds results/camvid/table1.csv results/camvid/table1_margins.csv
	@echo; cat results/camvid/table1.md

# two workers of one thread each, each taking whole files: the Snakemake-heavy files (the paper
# tables, the workflow) run side by side and fill each other's gaps (8.4 minutes on a fresh clone
# with 2 cores, against 11.5 in one process)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=10 -n $(TEST_WORKERS) --dist loadfile -m "not offline_kit" tests

# the README's figure from the demo's run: its evaluation's sample grid (image / ground truth / Ours /
# K-means) and psi's first four eigenfunctions on the first of those frames, into docs/img/
DEMO_RUN   := results/camvid/runs/nes-lite0-K128-a0.3-b0.16-s0
DEMO_FRAME  = $(firstword $(wildcard $(DEMO_RUN)/camvid-native/overlays/samples/*_image.png))
figure: $(STAMP)
	test -n "$(DEMO_FRAME)" || { echo "figure: no evaluation of $(DEMO_RUN): run make demo first"; exit 2; }
	mkdir -p docs/img
	$(BIN)/python -c "from PIL import Image; Image.open('$(DEMO_RUN)/camvid-native/samples.png').convert('RGB').save('docs/img/camvid_samples.jpg', quality=85)"
	$(BIN)/nes segment --run $(DEMO_RUN) --out-dir $(VENV)/figure --eigenfunctions 4 $(DEMO_FRAME)
	mv $(VENV)/figure/$(notdir $(basename $(DEMO_FRAME)))_eigenfunctions.png docs/img/camvid_eigenfunctions.png
	rm -r $(VENV)/figure

# the unit tests, without Snakemake runs or whole stages on real data: under 2 minutes on 2 cores
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not workflow and not gpu and not offline_kit" tests

# the offline install kit end to end: build a wheelhouse, install it with the network cut (needs
# root for `unshare -n`), make test-fast in that environment; 3.5 minutes on 2 cores
test-offline: $(STAMP)
	$(BIN)/python -m pytest -q -m offline_kit -s tests/test_offline_kit.py

# ruff (lint, and format as a check) on the code, mypy on the package; `make format` applies ruff's
lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench studies tools
	$(BIN)/ruff format --check pipeline tests bench studies tools
	$(BIN)/snakefmt --check Snakefile workflow/rules/*.smk
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix pipeline tests bench studies tools
	$(BIN)/ruff format pipeline tests bench studies tools
	$(BIN)/snakefmt Snakefile workflow/rules/*.smk

# GPU paths (skipped without CUDA) and the timings behind the README's table of GPU hours; < 5 min
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu -rs tests/test_gpu.py
	$(BIN)/python bench/gpu_step.py

# every pending GPU measurement within a time budget in seconds (docs/offline.md)
BUDGET      ?= 840
GPU_SESSION ?= results/gpu_session
gpu-session: $(STAMP)
	$(BIN)/python bench/gpu_session.py --budget $(BUDGET) --out $(GPU_SESSION)

# the whole pipeline at Pascal Context's size (synthetic data, random ViT-S): the README's GPU hours
pascal-size: $(STAMP)
	$(BIN)/python bench/pascal_size.py --cores $$(nproc)

bench: $(STAMP)
	$(BIN)/python bench/kernel_step.py
	$(BIN)/python bench/extraction.py

clean-results:
	rm -rf results .snakemake

# An offline install kit for nodes that reach no package index (docs/offline.md). On a machine
# with the indexes: make wheelhouse [TARGET_PYTHON=3.12] [TORCH=node]; carry the repository and
# the wheelhouse; on the node: make install-offline [NODE_PYTHON=/path/to/python-with-torch]
WHEELHOUSE    ?= wheelhouse
TORCH         ?= include
TARGET_PYTHON ?=
NODE_PACKAGES ?=
NODE_PYTHON   ?=

wheelhouse: $(STAMP)
	$(BIN)/python tools/offline_kit.py build --out $(WHEELHOUSE) --torch $(TORCH) \
		$(if $(TARGET_PYTHON),--python-version $(TARGET_PYTHON)) $(if $(NODE_PACKAGES),--node-packages $(NODE_PACKAGES))

install-offline:
	$(PYTHON) tools/offline_kit.py install --wheelhouse $(WHEELHOUSE) --venv $(VENV) --python $(PYTHON) \
		$(if $(NODE_PYTHON),--node-python $(NODE_PYTHON))
