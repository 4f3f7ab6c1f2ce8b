# Two commands on a fresh machine: `make demo` (install + main job on the bundled tiny release), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MVRAG := $(VENV)/bin/mvrag
DEMO_OUT ?= out/tiny_ckpt

.PHONY: install demo test test-all clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(MVRAG) convert --release tests/reference/tiny_release --out $(DEMO_OUT) --overwrite
	$(MVRAG) verify-reference --release tests/reference/tiny_release --cases tests/reference/cases

test: install
	$(PY) -m pytest -m "not slow"

test-all: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
