# lckernels — the two commands a fresh clone needs:
#   make demo   set up .venv, build the C++ extension, run the main job: the RL trainer's default config (a tiny
#               LongCat-Flash MoE learns addition; CPU, no downloads, a few minutes on 2 cores)
#   make test   same set-up, then the whole test suite (interpreter-mode Triton tests and the sm_90/sm_80 AOT
#               compile included)
# Every step leaves a stamp in .venv/ or .stamps/, so a second run skips what is finished.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch 2.13.0: the CPU wheel where there is no CUDA (pip finds it in the local wheel cache on the dev machines);
# on a CUDA machine the same pin resolves to PyPI's CUDA build.  Override with TORCH_SPEC / TORCH_PIP_ARGS.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
STAMPS := .stamps
CSRC   := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)

.PHONY: all setup build test test-fast test-interpreter test-slow test-mutations demo demo-kernels bench clean distclean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: | $(PY)
	@if command -v nvidia-smi >/dev/null 2>&1; then echo "CUDA driver found: installing $(TORCH_SPEC) (CUDA build)"; \
	 else echo "no CUDA driver: installing $(TORCH_SPEC) (CPU build)"; fi
	$(PIP) install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	@touch $@

# Editable install without build isolation (an isolated build would fetch a second torch); the extension is built
# in place by the next step instead, so LCK_NO_EXT=1 here.
$(VENV)/.deps: pyproject.toml setup.py $(VENV)/.torch
	$(PIP) install --quiet "setuptools>=77" wheel ninja "pybind11>=2.12"
	LCK_NO_EXT=1 $(PIP) install --quiet --no-build-isolation -e ".[test]"
	@touch $@

setup: $(VENV)/.deps

$(STAMPS)/ext: $(CSRC) setup.py $(VENV)/.deps
	@mkdir -p $(STAMPS)
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) setup.py --quiet build_ext --inplace
	$(PY) -c "import lckernels._ext as e; assert e.available(), 'lckernels._C failed to import'; print('lckernels._C built')"
	@touch $@

build: $(STAMPS)/ext

# Two pytest runs: TRITON_INTERPRET must be set before triton is imported, and the AOT compile must run without it.
test: build
	$(PY) -m pytest tests -m "not interpreter" $(PYTEST_ARGS)
	TRITON_INTERPRET=1 $(PY) -m pytest tests -m interpreter $(PYTEST_ARGS)

test-fast: build
	$(PY) -m pytest tests -m "not interpreter and not aot" -x -q $(PYTEST_ARGS)

test-interpreter: build
	TRITON_INTERPRET=1 $(PY) -m pytest tests -m interpreter $(PYTEST_ARGS)

test-slow: build
	LCK_SLOW_TESTS=1 $(MAKE) test

# one-line mutations of policy_loss/{math,config}.py and the objectives, each run in a temp copy: all must be KILLED
test-mutations: build
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) tests/oracles/mutations.py

DEMO_ARGS ?=
demo: build
	$(PY) -m lckernels_rl.train --config configs/default.yaml $(DEMO_ARGS)

# the kernels on their own: fused_logprobs checked against its reference, then timed beside torch
demo-kernels: build
	$(PY) examples/demo.py

bench: build
	$(PY) -m benchmarks.run --op fused_logprobs

clean:
	rm -rf build $(STAMPS) lckernels/_C*.so .pytest_cache benchmarks/out

distclean: clean
	rm -rf $(VENV) *.egg-info
