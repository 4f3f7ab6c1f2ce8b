# Two commands on a fresh machine: `make demo` (install + the main job: train a tiny MV-RAG in two stages on 8 fake
# CPU devices, then generate with and without retrieval and score what it learned), `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MVRAG := $(VENV)/bin/mvrag
DEMO ?= out/demo
TINY := tests/reference/tiny_release
# The demo's pod: 8 fake CPU devices (data=2 x fsdp=4 in configs/train.py:size=demo).
FAKE_POD := XLA_FLAGS=--xla_force_host_platform_device_count=8
CONCEPTS := configs/demo_concepts.json
PROMPTS := configs/demo_prompts.txt
# 16 objects per call; fewer DDIM steps than the paper's 50 + 10 (minutes of CPU)
DEMO_SAMPLING := --batch 16 --steps 20 --prior-steps 5

.PHONY: install demo test test-all clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Every step is an ordinary command; run again, the training resumes (or is done) and finished objects are skipped.
# Two stages as in the paper: a text -> multiview base (MVDream's role), then the retrieval branch on the frozen base
# (MV-RAG's), then generation of configs/demo_prompts.txt with and without retrieval, scored per group.
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
	    --background 127 --out $(DEMO)/collection --overwrite
	$(MVRAG) index --collection $(DEMO)/collection/collection.jsonl --out $(DEMO)/index --overwrite
	$(MVRAG) generate --release $(DEMO)/model --prompts $(PROMPTS) --index $(DEMO)/index --k 2 $(DEMO_SAMPLING) \
	    --out $(DEMO)/generated/retrieval
	$(MVRAG) generate --release $(DEMO)/model --prompts $(PROMPTS) $(DEMO_SAMPLING) --out $(DEMO)/generated/text_only
	$(PY) -m mvrag_jax.demo.report $(DEMO)/generated/retrieval $(DEMO)/generated/text_only --concepts $(CONCEPTS) \
	    --out $(DEMO)
	@echo "demo outputs: $(DEMO)/report.md (report.json, report.png), $(DEMO)/generated/*/*/grid.png"

test: install
	$(PY) -m pytest -m "not slow"

test-all: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) out .pytest_cache
