# Set-up and everyday commands. Everything runs inside .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow demo clean-venv

install: $(STAMP)

$(STAMP): build/requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r build/requirements.txt
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The default suite: fast tests only (minutes on 2 CPU cores).
test: install
	$(PY) -m pytest

# End-to-end tests (multi-process training, full pipelines).
test-slow: install
	$(PY) -m pytest -m slow

# Quick start: build the offline sample dataset, train the tiny quickstart
# model on the CPU, then reconstruct and sample from it.
demo: install
	$(PY) data_scripts/make_sample_dataset.py
	cd efficient_vdvae_torch && ../$(PY) train.py --config ../egs/quickstart.cfg
	cd efficient_vdvae_torch && ../$(PY) synthesize.py --config ../egs/quickstart.cfg \
		--set synthesis.synthesis_mode=reconstruction synthesis.save_target_in_reconstruction=True
	cd efficient_vdvae_torch && ../$(PY) synthesize.py --config ../egs/quickstart.cfg \
		--set synthesis.synthesis_mode=generation
	@echo "Images: efficient_vdvae_torch/logs-quickstart/synthesis-images/; curves: tensorboard --logdir efficient_vdvae_torch/logs-quickstart"

clean-venv:
	rm -rf $(VENV)
