# Long Context from Scratch: the single entry point.
#
#   make book      execute every book notebook once, build the HTML (_build/html/index.html)
#   make test      run the tests (all but those marked slow)
#   make help      list every target
#
# Every target that runs Python first creates or refreshes .venv (scripts/venv.sh)
# whenever pyproject.toml, requirements/constraints.txt or scripts/venv.sh changed.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PROFILE ?= cpu
DEVICE ?= auto
VENV ?= .venv
OUT ?= _build
EXECUTED ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
LAB_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# nbgrader shells out to alembic (and papermill to jupyter): the venv's bin comes first.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: help venv book test test-all lab student execute bench bench-lsh bench-reversible bench-reformer bench-infini bench-rmt bench-all checkpoints checkpoints-charlm checkpoints-passkey checkpoints-bench constraints clean

help:
	@echo "Long Context from Scratch"
	@echo "  make book       execute the book notebooks once and build the HTML -> $(OUT)/html/index.html"
	@echo "                  (PROFILE=$(PROFILE) DEVICE=$(DEVICE); EXECUTED=$(OUT)/executed reuses make execute's runs)"
	@echo "  make test       run the tests except those marked slow"
	@echo "  make test-all   run every test, slow ones included"
	@echo "  make lab        JupyterLab with nbgrader in this folder"
	@echo "  make student    regenerate notebooks/ from solutions/ (nbgrader)"
	@echo "  make execute    run book and solution notebooks with papermill -> $(OUT)/executed/"
	@echo "  make bench      run benchmarks/attention.py on DEVICE"
	@echo "  make bench-lsh  run benchmarks/lsh.py on DEVICE (against Hugging Face if transformers is installed)"
	@echo "  make bench-reversible  run benchmarks/reversible.py on DEVICE (memory and time against depth)"
	@echo "  make bench-reformer  run benchmarks/reformer.py on DEVICE (a million-token training step; against Hugging Face)"
	@echo "  make bench-infini  run benchmarks/infini.py on DEVICE (streaming 16K-1M tokens in constant memory; against infini-transformer-pytorch)"
	@echo "  make bench-rmt     run benchmarks/rmt.py on DEVICE (RMT streams 16K-1M tokens in constant memory, BPTT depth, FLOPs; against recurrent-memory-transformer-pytorch)"
	@echo "  make bench-all     run longctx_lib.bench: every method side by side (time, memory, quality) -> $(OUT)/bench/ (PROFILE sets the sizes)"
	@echo "  make checkpoints retrain chapter 2's duplication-task models -> checkpoints/duplication/"
	@echo "  make checkpoints-charlm retrain chapter 4's character-level models -> checkpoints/charlm/ (about 20 minutes)"
	@echo "  make checkpoints-passkey retrain chapter 5's passkey-retrieval models -> checkpoints/passkey/ (about 15 minutes)"
	@echo "  make checkpoints-bench retrain chapter 7's quality models -> checkpoints/bench/ (55 minutes on one busy core; two processes with disjoint --methods: about 30)"
	@echo "  make venv       create or refresh $(VENV)"
	@echo "  make clean      remove $(OUT)/ and caches (keeps $(VENV))"
	@echo "Variables: PROFILE=smoke|cpu|gpu (profiles.yml), DEVICE=auto|cpu|cuda"

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt scripts/venv.sh
	VENV=$(VENV) bash scripts/venv.sh
	@touch $@

book: $(STAMP)
	$(PY) scripts/build_book.py --profile $(PROFILE) --device $(DEVICE) --out $(OUT) $(if $(EXECUTED),--executed $(EXECUTED))

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=. $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

student: $(STAMP)
	$(PY) scripts/generate_student.py

execute: $(STAMP)
	$(PY) scripts/execute_notebooks.py --profile $(PROFILE) --device $(DEVICE) --out $(OUT)/executed

bench: $(STAMP)
	DEVICE=$(DEVICE) $(PY) benchmarks/attention.py --device $(DEVICE) $(BENCH_ARGS)

# The comparison with Hugging Face needs the optional extra: .venv/bin/pip install -e ".[bench]"
bench-lsh: $(STAMP)
	DEVICE=$(DEVICE) $(PY) benchmarks/lsh.py --device $(DEVICE) $(BENCH_ARGS)

bench-reversible: $(STAMP)
	DEVICE=$(DEVICE) $(PY) benchmarks/reversible.py --device $(DEVICE) $(BENCH_ARGS)

# Retrain the shipped duplication-task checkpoints (chapter 2): 2-10 minutes per model on 2 CPU
# cores (measured: full attention 2.3, LSH-1 4, LSH-2 7, LSH-4 10 minutes on a busy machine).
# Chapter 4's headline: one training step on 1,048,576 tokens (tens of minutes and about 15 GiB
# on a CPU), then the same model against Hugging Face's Reformer at 64K tokens.
bench-reformer: $(STAMP)
	$(PY) benchmarks/reformer.py --million --hf --length 65536 --device $(DEVICE) $(BENCH_ARGS)

# Chapter 5's headline: Infini-attention streams 16K, 64K, 256K and 1M tokens in constant memory
# (peak of each in a fresh process; 16 of the 22 minutes measured on 2 busy CPU cores), full attention for
# contrast up to 2 GiB, then the same model against infini-transformer-pytorch (pip install -e ".[bench]").
bench-infini: $(STAMP)
	$(PY) benchmarks/infini.py --stream --full-attention --package --device $(DEVICE) $(BENCH_ARGS)

# Chapter 6's headline: RMT streams 16K..1M tokens in constant memory (peak of each in a fresh process), full
# attention for contrast up to 2 GiB, the training step's peak against the BPTT depth, the FLOP table for the
# OPT family, then the same model against recurrent-memory-transformer-pytorch (pip install -e ".[bench]").
# 6 minutes measured on 2 busy CPU cores with BENCH_ARGS=--threads 1.
bench-rmt: $(STAMP)
	$(PY) benchmarks/rmt.py --stream --bptt --flops --package --full --device $(DEVICE) $(BENCH_ARGS)

# Chapter 7's harness: every method on the same workloads (time and peak memory from 1K tokens
# up to the longest each fits under the profile's budget, forward and forward+backward; accuracy
# of the shipped quality models beyond their training length), written as JSON with the machine's
# description and a figure. Compare two runs with:
#   .venv/bin/python -m longctx_lib.bench compare a.json b.json
# PROFILE=smoke takes about 3 minutes on 2 CPU cores; gpu sweeps to 1M tokens in a 40 GiB budget.
bench-all: $(STAMP)
	$(PY) -m longctx_lib.bench run --profile $(PROFILE) --device $(DEVICE) --out $(OUT)/bench/results-$(PROFILE).json $(BENCH_ARGS)

checkpoints: $(STAMP)
	$(PY) scripts/train_duplication.py $(TRAIN_ARGS)

# Retrain the shipped character-level language models (chapter 4: full attention against LSH on
# the standard library's source), three runs one after the other: about 20 minutes on 2 idle CPU
# cores (measured: 4 for full-1k, 7 for each LSH run); 14-20 minutes a run with one thread each on
# a busy machine. CHARLM_ARGS="--only lsh-1k --threads 1" trains one run (on a machine shared with
# other jobs one thread was several times faster than two).
checkpoints-charlm: $(STAMP)
	$(PY) scripts/train_charlm.py $(CHARLM_ARGS)

# Retrain the shipped passkey-retrieval models (chapter 5: Infini-attention with linear against
# delta memory, and the gate learning-rate ablation), four runs one after the other, each then
# evaluated at 1x-64x its training length: about 15 minutes on a shared 2-core machine (measured:
# linear 3.5, delta 4.3, gate-lr-small 2.5, gate-lr-large 3.2 minutes of training, 25 s of
# evaluation each). PASSKEY_ARGS="--only delta" trains one run.
checkpoints-passkey: $(STAMP)
	$(PY) scripts/train_passkey.py $(PASSKEY_ARGS)

# Retrain chapter 7's quality models (sdpa, lsh, infini, rmt on passkey, associative retrieval
# and copy; 1,500 steps each at 128 tokens): 12 runs one after the other. BENCH_TRAIN_ARGS="--tasks copy
# --methods rmt" trains some; two processes with disjoint --methods halve the wall time.
checkpoints-bench: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m longctx_lib.bench train $(BENCH_TRAIN_ARGS)

# Re-pin requirements/constraints.txt from a fresh environment (after editing
# pyproject.toml's dependencies). Takes a couple of minutes.
constraints:
	rm -rf $(OUT)/constraints-venv
	python3 -m venv $(OUT)/constraints-venv
	$(OUT)/constraints-venv/bin/pip install -q "$${TORCH_SPEC:-torch==2.13.0}" $${TORCH_PIP_ARGS:-}
	$(OUT)/constraints-venv/bin/pip install -q -e ".[dev]"
	{ sed -n '/^#/p;/^$$/q' requirements/constraints.txt; \
	  $(OUT)/constraints-venv/bin/pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton)'; \
	} > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt
	rm -rf $(OUT)/constraints-venv
	@echo "requirements/constraints.txt re-pinned; run 'make venv' to apply"

clean:
	rm -rf $(OUT) .pytest_cache
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name .ipynb_checkpoints \) -type d -print0 | xargs -0 rm -rf
