# Two commands on a fresh machine: `make demo` (install + the main job: train a tiny MV-RAG on 8 fake CPU devices,
# then generate with retrieval and check what it learned), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MVRAG := $(VENV)/bin/mvrag
DEMO ?= out/demo
TINY := tests/reference/tiny_release
# The demo's pod: 8 fake CPU devices (data=2 x fsdp=4 in configs/train.py:size=demo).
FAKE_POD := XLA_FLAGS=--xla_force_host_platform_device_count=8

.PHONY: install demo test test-all clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Every step is an ordinary command; run again, the training resumes (or is done) and finished objects are skipped.
demo: install
	$(MVRAG) convert --release $(TINY) --out out/tiny_ckpt --overwrite
	$(PY) -m mvrag_jax.demo.base --release $(TINY) --out $(DEMO)/base --overwrite
	$(FAKE_POD) $(MVRAG) train --config configs/train.py:size=demo --workdir $(DEMO)/train \
	    --config.train.init=$(DEMO)/base
	$(MVRAG) export --ckpt $(DEMO)/train --out $(DEMO)/model --overwrite
	$(PY) -m data_pipelines.shape_collection --out $(DEMO)/collection --overwrite
	$(MVRAG) index --collection $(DEMO)/collection/collection.jsonl --out $(DEMO)/index --overwrite
	$(MVRAG) generate --release $(DEMO)/model --prompts configs/demo_prompts.txt --index $(DEMO)/index --k 2 \
	    --batch 12 --out $(DEMO)/generated
	$(PY) -m mvrag_jax.demo.colour $(DEMO)/generated --json $(DEMO)/colour.json
	@echo "demo outputs: $(DEMO)/train/loss.png, $(DEMO)/generated/*/grid.png, $(DEMO)/colour.json"

test: install
	$(PY) -m pytest -m "not slow"

test-all: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
