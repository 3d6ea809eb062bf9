# The two commands a newcomer needs:  make demo  (the main job)  and  make test  (the tests).
# Both install what they need into .venv first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# What scripts/check_env.py verified (Java and the programs the tests start); checked on every
# make install/test/demo, rewritten only when it changes, and the install depends on it.
COMPONENTS := $(VENV)/.components
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off

.DEFAULT_GOAL := help
.PHONY: help install test lint format demo serve stop status image clean FORCE

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(INSTALLED)  ## .venv with the pinned dependencies; Java, Redis, nginx, ab, dpkg-deb from Debian

$(COMPONENTS): FORCE
	@$(PYTHON) scripts/check_env.py --install --record $@

$(INSTALLED): requirements.txt requirements-dev.txt constraints.txt pyproject.toml $(COMPONENTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PY) -m pip install $(PIP_FLAGS) --no-deps --no-build-isolation -e .
	$(PY) scripts/check_install.py
	touch $@

test: install  ## lint + the whole test suite (unit and real-TorchServe integration)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

lint: install  ## ruff check and format check only
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: install  ## build data, train, export, archive, serve, and ask the server about held-out images
	$(PY) scripts/demo.py

serve: install  ## start TorchServe on whatever .mar files are in model_store/
	$(PY) scripts/serve.py start

stop:  ## stop the TorchServe (and the playground's nginx) started by make serve / make demo
	@if [ -x $(PY) ]; then $(PY) scripts/nginx_front.py stop; $(PY) scripts/serve.py stop; fi

status: install  ## models, workers and queues of the running server
	$(PY) scripts/serve.py status

image: install  ## build the container image with podman (Debian base made with debootstrap)
	$(PY) scripts/build_image.py

clean:  ## remove built artefacts (keeps .venv and the dataset cache)
	rm -rf artifacts .run .pytest_cache .ruff_cache
	find model_store -name '*.mar' -delete
