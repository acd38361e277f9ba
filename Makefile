# perflab — two commands on a fresh machine:  `make run`  and  `make test`.
# Each sets itself up: a project-local virtualenv (.venv), real PostgreSQL/Redis servers from pip
# packages (state in .perflab/), the course data. Nothing is assumed but Python 3.11+, make and cc.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.perflab-installed
PERFLAB := $(BIN)/perflab

SCALE ?=
LAB ?=
SUBMISSION ?=

.PHONY: help setup run test test-fast up down status env data lab grade labs bench strip clean clean-data

help:
	@echo "make run      start the stack, build the data, execute every notebook, write build/index.html"
	@echo "make test     unit tests, every notebook and solution at tiny scale, grader checks"
	@echo "make lab      JupyterLab on 127.0.0.1 (token printed) over your copies in work/, stack and data ready"
	@echo "make grade LAB=01 SUBMISSION=work/labs/01_let_the_index_work.ipynb"
	@echo "make up | down | status | env | data | labs | bench SCALE=full | strip | clean"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "perflab needs Python 3.11 or newer; this is " + sys.version.split()[0] + ". Fix: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing perflab and its dependencies into $(VENV) (first run only)"
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test,lab]"
	@touch $(STAMP)

run: setup
	$(PERFLAB) run $(if $(SCALE),--scale $(SCALE),)

# Tests run against their own servers (state in .perflab/test) so a running course is left alone.
test: setup
	PERFLAB_SCALE=tiny PERFLAB_PRESET=fast PERFLAB_STATE_DIR=$(CURDIR)/.perflab/test \
	PERFLAB_BUILD_DIR=$(CURDIR)/build/test $(BIN)/python -m pytest

up: setup
	$(PERFLAB) stack up

down:
	@if [ -x $(PERFLAB) ]; then $(PERFLAB) stack down; \
	 if [ -d .perflab/test ]; then PERFLAB_STATE_DIR=$(CURDIR)/.perflab/test $(PERFLAB) stack down; fi; \
	 else echo "nothing to stop (no .venv)"; fi

status: setup
	$(PERFLAB) stack status

env: setup
	@$(PERFLAB) stack env

data: up
	$(PERFLAB) data build $(if $(SCALE),--scale $(SCALE),)

# JupyterLab opens your own copies in work/ (git-ignored; made once, never overwritten), so autosave
# never touches the course's notebooks/ and labs/. Grade a copy: make grade LAB=01 SUBMISSION=work/labs/01_...
# As root (containers, CI) Jupyter refuses to start without --allow-root.
lab: data
	@mkdir -p work/notebooks work/labs
	@for f in notebooks/*.ipynb labs/*.ipynb; do test -e "work/$$f" || cp "$$f" "work/$$f"; done
	@echo "JupyterLab on 127.0.0.1 only; open the URL with the token printed below. Your copies: work/notebooks, work/labs"
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=$(CURDIR)/work $(if $(filter 0,$(shell id -u)),--allow-root,)

grade: setup
	@test -n "$(SUBMISSION)" || (echo "usage: make grade LAB=01 SUBMISSION=path/to/notebook.ipynb"; exit 2)
	$(PERFLAB) grade "$(SUBMISSION)" $(if $(LAB),--lab $(LAB),)

labs: setup
	$(PERFLAB) labs

bench: setup
	$(PERFLAB) bench $(if $(SCALE),--scale $(SCALE),)

strip: setup
	$(PERFLAB) strip

clean:
	rm -rf build

clean-data: setup
	$(PERFLAB) data clean
