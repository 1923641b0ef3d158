# Every target works from a fresh clone with Python 3.11 and the package registries.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= small
PORT ?= 8888
JOBS ?= auto
# RESUME=1: run-all keeps every report made with the same key and runs only the others.
RESUME ?=
# Offline data: ../shared/data when it exists and DATA_DIR is unset (absolute, so that
# kernels started in other folders see the same path).
DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(CURDIR)/data)
export DATA_DIR
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help venv tools test lint run-all run seeds lab html pdf chromium data bench clean clean-cache \
	distclean

help:
	@echo "make test | run-all [PROFILE=small] [JOBS=auto] [RESUME=1] | run NB=notebooks/... [PROFILE=smoke] | seeds NB=... | lab"
	@echo "make html | pdf [PROFILE=small] | data [PROFILE=full] | bench | clean | clean-cache"
	@echo "make distclean"

$(VENV)/.installed: requirements.txt requirements-assets.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (project .venv)"
	if git rev-parse --git-dir >/dev/null 2>&1; then $(VENV)/bin/nbstripout --install; fi
	touch $@

venv: $(VENV)/.installed

.tools/.installed: tools/package.json
	mkdir -p .tools && cp tools/package.json .tools/package.json
	cd .tools && npm install --no-audit --no-fund --loglevel=error
	touch $@

tools: .tools/.installed

lint: venv
	$(VENV)/bin/ruff check helpers tests bench notebooks

test: venv tools lint
	$(PY) -m pytest

run-all: venv tools
	$(PY) -m helpers.nb.run --profile $(PROFILE) --jobs $(JOBS) $(if $(filter 1 yes true,$(RESUME)),--resume)

run: venv tools
	@test -n "$(NB)" || { echo "usage: make run NB=notebooks/<assignment>/<name>.ipynb [PROFILE=smoke|small|full]"; exit 2; }
	$(PY) -m helpers.nb.run --profile $(PROFILE) $(NB)

# Seed-to-seed spread of a notebook's headline metrics, written into its .toml (SEEDS= to change).
SEEDS ?= 0 1 2
seeds: venv tools
	@test -n "$(NB)" || { echo "usage: make seeds NB=notebooks/<assignment>/<name>.ipynb [PROFILE=small] [SEEDS='0 1 2']"; exit 2; }
	$(PY) -m helpers.nb.seeds --profile $(PROFILE) --seeds $(SEEDS) -- $(NB)

lab: venv tools
	$(VENV)/bin/jupyter lab --no-browser --ip 127.0.0.1 --port $(PORT) $(ROOT_FLAG) notebooks

html: venv tools
	$(PY) -m helpers.nb.export html --profile $(PROFILE)

chromium:
	@{ command -v chromium && command -v pdftotext; } >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core poppler-utils; }

pdf: venv tools chromium
	$(PY) -m helpers.nb.export pdf --profile $(PROFILE)

data: venv
	$(PY) -m helpers.nb.assets --profile $(PROFILE)

bench: venv
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	find reports -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './.venv/*' -exec rm -rf {} +

# The shared cache (helpers.nb.cache: $HELPERS_CACHE, default ~/.cache/dl-homework); rebuilt
# on the next run.
clean-cache: venv
	root="$$($(PY) -c 'from helpers.nb.cache import cache_root; print(cache_root())')" && \
	  test -n "$$root" && rm -rf "$$root"

distclean: clean
	rm -rf $(VENV) .tools
