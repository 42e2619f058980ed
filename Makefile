# Two commands set up and run everything on a fresh machine: `make dataset` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Optional backends installed by `make setup` (see README "Extras"); `make setup-blender` for photoreal renders.
EXTRAS ?= dev,render,official,train8bit
BLENDER_VENV ?= .venv-blender
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
SAMPLE_INPUTS ?= data/inputs
SAMPLE_OUT ?= data/sample

.PHONY: setup setup-blender dataset test test-slow bench clean-sample

setup: $(STAMP)

# One line per install step, then its time and the venv's size (pip itself stays quiet: its per-package lines
# would be hundreds).
step = @echo "setup: $(1)"; t=$$(date +%s); $(2) && echo "setup:   done in $$(($$(date +%s) - t)) s; $(VENV) now $$(du -sh $(VENV) | cut -f1)"

# Idempotent: reinstalls only when pyproject.toml or the constraints change (or the venv is gone).
$(STAMP): pyproject.toml constraints.txt
	@echo "setup: installing into $(VENV), ~7 GB; ~6-7 min on a 2-core machine (once; a no-op after)"
	$(call step,virtualenv and pip,(test -x $(BIN)/python || $(PY) -m venv $(VENV)) && $(BIN)/python -m pip install -q --upgrade pip)
# torch first, pinned with torchvision: other pairs break torchvision's ops (see README)
	$(call step,torch 2.14.1 + torchvision 0.29.1 (the largest part),$(BIN)/python -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1)
	$(call step,anystory-data with extras [$(EXTRAS)]: transformers / diffusers / ray / ...,$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]")
	@rm -f $(VENV)/.installed-*
	@touch $@

# The blender render backend's own interpreter: bpy pins numpy<2 and Python 3.11 (requirements-blender.txt).
setup-blender: $(BLENDER_VENV)/.installed

$(BLENDER_VENV)/.installed: requirements-blender.txt
	test -x $(BLENDER_VENV)/bin/python || $(PY) -m venv $(BLENDER_VENV)
	$(BLENDER_VENV)/bin/python -m pip install -q --upgrade pip
	$(BLENDER_VENV)/bin/python -m pip install -q -r requirements-blender.txt
	touch $@

dataset: setup
	@echo "dataset: sample inputs, then every source on a local Ray, then validation; ~4-5 min on 2 cores"
	$(BIN)/python -m datagen.samples $(SAMPLE_INPUTS)
	$(BIN)/python -m pipelines all --config configs/sample.yaml --out $(SAMPLE_OUT)
	$(BIN)/python -m datagen.shards validate $(SAMPLE_OUT)

# The default run also checks what `make dataset` built (every source, validation, evaluation on it).
# TEST_WORKERS pytest processes (pytest-xdist), a test module to one of them (its module fixtures run once): most
# tests use one core (OMP_NUM_THREADS=1), so two fill a 2-core machine. More cores: TEST_WORKERS=4 (each ~2-3 GB).
TEST_WORKERS ?= 2
test: dataset
	@echo "test: the fast suite on $(TEST_WORKERS) processes, ~10-12 min on 2 cores (slowest tests listed at the end)"
	ANYSTORY_SAMPLE_DATASET=$(SAMPLE_OUT) $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --durations=15

# Slow tests (long pipeline runs, multi-process Ray cluster, real-size shapes): not in the default run.
test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean-sample:
	rm -rf $(SAMPLE_INPUTS) $(SAMPLE_OUT)
