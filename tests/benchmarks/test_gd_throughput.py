"""benchmarks/gd_throughput.py on the demo recipe, cut to one step per arm: both arms train and are measured."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gd_throughput.py"


@pytest.mark.slow
def test_both_arms_train_on_the_demo_recipe(capsys):
    """The demo recipe starts from a pruned student; the benchmark must still build one of its shape."""
    spec = importlib.util.spec_from_file_location("benchmarks_gd_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    assert module.main(["--steps", "1", "--rounds", "1", "--stages.ged.batch_size", "4"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| before", "| after"))]
    assert [row[0].strip() for row in rows] == ["before", "after"]
    for _, tokens_per_s, teacher_share, feed in rows:
        assert float(tokens_per_s.replace(",", "")) > 0 and float(feed.replace(",", "")) > 0
        assert 0 < float(teacher_share.strip().rstrip("%")) < 100
