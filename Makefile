# Two commands a user needs: `make train` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install train test clean

$(VENV)/.installed: pyproject.toml scripts/build_learn2learn.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned below 2.14, so that nothing later pulls a CUDA build.
	$(PY) -m pip install --quiet "torch>=2.3,<2.14"
	# learn2learn 0.2.0 as a locally built wheel (see scripts/build_learn2learn.py for why).
	$(PY) scripts/build_learn2learn.py .wheels
	$(PY) -m pip install --quiet --find-links .wheels -e ".[test]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) train.py --config configs/quick.yaml $(ARGS)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .wheels
