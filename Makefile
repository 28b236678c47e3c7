# Set-up and everyday commands. Everything runs inside .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo demo-jax clean-venv

install: $(STAMP)

$(STAMP): build/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r build/requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Test workers (pytest-xdist), one per core of the 2-core CI machine; each test file runs whole on one
# worker, so its module fixtures are built once. `make test TEST_WORKERS=0` runs in this process.
TEST_WORKERS ?= 2

# The default suite: fast tests only (minutes on 2 CPU cores).
test: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# End-to-end tests (multi-process training, full pipelines), one at a time: several time a lost or
# stopped process, which a second worker on the same cores would make flaky.
test-slow: install
	$(PY) -m pytest -m slow

# Quick start (a few minutes on 2 CPU cores): build the offline shapes dataset,
# train the tiny quickstart model from scratch, reconstruct and sample from it;
# prints the test NELBO, the grids to open and the TensorBoard command.
demo: install
	$(PY) scripts/quickstart_demo.py torch

# The same with the JAX implementation.
demo-jax: install
	$(PY) scripts/quickstart_demo.py jax

clean-venv:
	rm -rf $(VENV)
