# Two commands on a fresh machine: `make demo` (install + the main job: train a tiny MV-RAG on 8 fake CPU devices,
# then generate with retrieval and check what it learned), `make test`. CI (.ci/run) runs `make test-all` (every
# test, the slow and the libtpu ones) and the demo.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MVRAG := $(VENV)/bin/mvrag
DEMO ?= out/demo
TINY := tests/reference/tiny_release
# The demo's pod: 8 fake CPU devices (data=2 x fsdp=4 in configs/train.py:size=demo).
FAKE_POD := XLA_FLAGS=--xla_force_host_platform_device_count=8
# pytest workers (pytest-xdist): the compiles are mostly single-threaded, so 2 workers on 2 cores take ~0.6x the time
# of one. A file runs whole on one worker (its module fixtures are built once). PYTEST_WORKERS=0: no workers.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: install demo test test-all pytest-all clean

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

# The development loop: every test but the slow ones.
test: install
	$(PYTEST) -m "not slow" --durations=20

# Everything CI proves (.ci/run): the slow tests too (SIGTERM resume, two processes, meshes, a bucket run, 8-device
# generation, config C) and the libtpu ones (TPU plans, Pallas kernels, compile_effort), in their own venv with
# requirements-tpu.txt on top, so `make test` stays the fast loop (libtpu there would add its compiles).
ALL_VENV ?= .venv-all
test-all:
	$(MAKE) VENV=$(ALL_VENV) $(ALL_VENV)/.installed $(ALL_VENV)/.installed-tpu
	$(MAKE) VENV=$(ALL_VENV) pytest-all

pytest-all:
	$(PYTEST) --durations=30

$(VENV)/.installed-tpu: $(VENV)/.installed requirements-tpu.txt
	$(PY) -m pip install -q -r requirements.txt -r requirements-tpu.txt
	touch $@

clean:
	rm -rf $(VENV) $(ALL_VENV) out .pytest_cache
