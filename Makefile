# Two commands on a fresh machine: `make demo` (install + the main job: train a tiny MV-RAG on the embedded synthetic
# shapes, then generate known and unseen concepts with and without retrieval and score them), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MVRAG := $(VENV)/bin/mvrag
DEMO ?= out/demo
TINY := tests/reference/tiny_release
# The demo's unseen concepts: new names ("a dax") for colour/shape pairs no training step saw (configs/data.py
# DEMO_HELD_OUT); only the retrieval collection shows them.
CONCEPTS := configs/demo_concepts.json
PROMPTS := configs/demo_prompts.txt
# The demo's training pod: 8 fake CPU devices (data=2 x fsdp=4 in configs/train.py:size=demo).
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
	$(FAKE_POD) $(MVRAG) train --config configs/train.py:size=demo,stage=base --workdir $(DEMO)/base_train \
	    --config.train.init=$(DEMO)/base
	$(MVRAG) export --ckpt $(DEMO)/base_train --out $(DEMO)/base_model --overwrite
	$(MVRAG) convert --release $(DEMO)/base_model --out $(DEMO)/base_ckpt --overwrite
	$(FAKE_POD) $(MVRAG) train --config configs/train.py:size=demo,stage=adapter --workdir $(DEMO)/train \
	    --config.train.init=$(DEMO)/base_ckpt
	$(MVRAG) export --ckpt $(DEMO)/train --out $(DEMO)/model --overwrite
	$(PY) -m data_pipelines.shape_collection --config configs/data.py:size=demo --concepts $(CONCEPTS) \
	    --out $(DEMO)/collection --overwrite
	$(MVRAG) index --collection $(DEMO)/collection/collection.jsonl --out $(DEMO)/index --overwrite
	$(MVRAG) generate --release $(DEMO)/model --prompts $(PROMPTS) --index $(DEMO)/index --k 2 --batch 21 \
	    --out $(DEMO)/generated/retrieval
	$(MVRAG) generate --release $(DEMO)/model --prompts $(PROMPTS) --batch 21 --out $(DEMO)/generated/text_only
	$(PY) -m mvrag_jax.demo.report $(DEMO)/generated/retrieval $(DEMO)/generated/text_only --concepts $(CONCEPTS) \
	    --out $(DEMO)
	@echo "demo outputs: $(DEMO)/report.md (report.json, report.png), $(DEMO)/generated/*/*/grid.png"

test: install
	$(PY) -m pytest -m "not slow"

test-all: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
