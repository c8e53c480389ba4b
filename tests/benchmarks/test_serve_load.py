"""benchmarks/serve_load.py: the load generator only ever loads this machine."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_load_refuses_non_loopback_addresses(serve_load):
    with pytest.raises(serve_load.LoadError, match="loopback"):
        serve_load.run_load("http://192.0.2.1:3000", [{"texts": ["a"]}], 1, 1)
    assert serve_load.check_loopback("http://[::1]:3000/") == "http://[::1]:3000"


def test_generator_cores_split_the_machine_and_pin_the_processes(serve_load):
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two usable cores")
    server, generator = serve_load.split_cores(1)
    assert server | generator == set(cores) and not server & generator and generator == {cores[-1]}
    assert serve_load.split_cores(0) == (None, None)
    with pytest.raises(serve_load.LoadError, match="give the generator fewer"):
        serve_load.split_cores(len(cores))
    for cpus in (server, generator):
        seen = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                              capture_output=True, text=True, check=True, preexec_fn=serve_load.pinned(cpus))
        assert seen.stdout.strip() == str(sorted(cpus))
