# diffkit: two commands on a fresh machine.
#   make demo   train a small flow model on a 2-D toy set, sample it, write demo.png, print metrics
#   make test   check notebooks and package agree, lint, run every notebook, build docs, run pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV  := .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := $(VENV)/.diffkit-installed

.PHONY: install demo test export-check lint nbtest docs pytest readme clean

install: $(STAMP)

# torch 2.13.0 goes in first (a CPU build lies on disk); an unpinned torch would pull a CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(BIN)/diffkit demo

# nbdev-export must leave the tree unchanged: notebooks and package agree.
export-check: $(STAMP)
	$(BIN)/nbdev-export
	@if [ -n "$$(git status --porcelain -- diffkit)" ]; then \
	  echo "nbdev-export changed diffkit/: notebooks and package disagree"; git status --porcelain -- diffkit; exit 1; \
	else echo "export-check: notebooks and package agree"; fi
	$(PY) tools/make_readme.py --check

# README.md is generated from nbs/index.ipynb.
readme: $(STAMP)
	$(PY) tools/make_readme.py

lint: $(STAMP)
	$(BIN)/ruff check diffkit --select F821,F822,F823,E9 --no-cache

nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev-test --timing --n-workers 2

docs: $(STAMP)
	$(PY) tools/build_docs.py

pytest: $(STAMP)
	$(BIN)/pytest -q tests

test: export-check lint nbtest docs pytest

clean:
	rm -rf _docs _proc nbs/_docs nbs/_proc demo.png
