# The two commands of the README: `make quickstart` (the main job) and `make test` (the test suite).
# Both create and use ./.venv; nothing outside this folder is installed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Compile the CUDA kernels whenever nvcc is available (they are only run where a GPU is).
FORCE_CUDA ?= $(shell command -v nvcc >/dev/null 2>&1 && echo 1 || echo 0)
STAMP := $(VENV)/.cvpods-installed
SOURCES := setup.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: install test test-fast quickstart lint clean

install: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install "setuptools>=64" wheel ninja
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	FORCE_CUDA=$(FORCE_CUDA) MAX_JOBS=2 $(PIP) install --no-build-isolation -e ".[dev]"
	$(PY) -c "import cvpods; print('cvpods', cvpods.__version__, 'extension:', cvpods.extension_available())"
	touch $(STAMP)

# Fast unit tests first, then the slow end-to-end checks once.
test: install
	$(PY) -m pytest -q -m "not slow" tests
	$(PY) -m pytest -q -m slow tests; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ]

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# Extra arguments: make quickstart QUICKSTART_ARGS="--fresh" (see tools/quickstart.py --help).
quickstart: install
	$(PY) tools/quickstart.py $(QUICKSTART_ARGS)

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf build *.egg-info cvpods/_C*.so
