"""``compressor.distill`` end to end with a tiny random teacher on real GLUE slices and the real corpus.

What training received is recorded through :class:`DistillationCallback` (the trainer's public hook):
which teacher produced the targets, which batches the student saw, which loss terms were computed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from compressor.config import load_recipe
from compressor.data import load_task_data, tokenize_task
from compressor.distill import STAGE_MARKER, DistillError, main, run
from compressor.trainer import DistillationCallback

pytestmark = pytest.mark.slow
LATENT = ["attention", "embedding", "hidden"]


class SimulatedKill(Exception):
    pass


class Recorder(DistillationCallback):
    """Per stage: the teacher's source path, the batches' rows (padding removed), the loss terms; can 'kill' the run."""

    def __init__(self, kill_at: tuple[str, int] | None = None):
        self.steps: dict[str, list[dict]] = {}
        self.kill_at = kill_at

    def on_distill_step(self, args, state, control, *, teacher, inputs, losses):
        self.steps.setdefault(Path(args.output_dir).parent.name, []).append({
            "teacher": teacher.config._name_or_path, "labelled": "labels" in inputs,
            "rows": [tuple(r[m.bool()].tolist()) for r, m in zip(inputs["input_ids"], inputs["attention_mask"])],
            "losses": sorted(k for k in losses if k != "loss")})

    def on_step_end(self, args, state, control, **kwargs):
        if self.kill_at == (Path(args.output_dir).parent.name, state.global_step):
            raise SimulatedKill(f"killed at step {state.global_step}")


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_encoder_dir, tiny_recipe, write_recipe):
    """SST-2, four stages, teacher fine-tuned here; killed at TAD step 3 (checkpoint at 2), then rerun to the end."""
    folder = tmp_path_factory.mktemp("resume")
    recipe = load_recipe(write_recipe(folder, tiny_recipe(tiny_encoder_dir)))
    out = folder / "run"
    first, second = Recorder(kill_at=("tad", 3)), Recorder()
    with pytest.raises(SimulatedKill):
        run(recipe, out, callbacks=[first])
    interrupted = {"tad_marker": (out / "tad" / STAGE_MARKER).exists(),
                   "checkpoints": sorted(p.name for p in (out / "tad" / "checkpoints").iterdir()),
                   "gd_mtime": (out / "gd" / STAGE_MARKER).stat().st_mtime_ns}
    report = run(recipe, out, callbacks=[second])
    return recipe, out, first, second, interrupted, report


def test_each_stage_uses_the_teacher_data_and_losses_its_recipe_names(resumed_run, tiny_encoder_dir, glue_dir):
    recipe, out, first, second, _, _ = resumed_run
    seen = {**first.steps, **second.steps}  # gd/ged ran in the first run, tad/tsd finished in the second
    teacher_of = {"pretrained": str(tiny_encoder_dir), "finetuned": str(out / "teacher")}
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    train_rows = {tuple(r) for r in tokenize_task(load_task_data(recipe.task), tokenizer, 32)["train"]["input_ids"]}
    for stage in recipe.stages:
        steps = seen[stage.name]
        assert {s["teacher"] for s in steps} == {teacher_of[stage.teacher]}, stage.name
        assert {tuple(s["losses"]) for s in steps} == {tuple(sorted(stage.losses))}, stage.name
        rows = [r for s in steps for r in s["rows"]]
        if stage.data == "general":  # packed corpus blocks: full length, [CLS] ... [SEP], no labels
            assert not any(s["labelled"] for s in steps)
            assert all(len(r) == 32 and r[0] == tokenizer.cls_token_id and r[-1] == tokenizer.sep_token_id for r in rows)
            assert not set(rows) & train_rows
        else:  # labelled rows of the task's training slice
            assert all(s["labelled"] for s in steps)
            assert set(rows) <= train_rows
    assert seen["tsd"][0]["losses"] == sorted(LATENT + ["hard", "soft"])


def test_resume_skips_finished_stages_and_continues_the_interrupted_one(resumed_run):
    recipe, out, first, second, interrupted, report = resumed_run
    assert not interrupted["tad_marker"] and interrupted["checkpoints"] == ["checkpoint-2"]
    assert set(first.steps) == {"gd", "ged", "tad"} and len(first.steps["tad"]) == 3
    assert set(second.steps) == {"tad", "tsd"}  # no finished stage repeated
    assert (out / "gd" / STAGE_MARKER).stat().st_mtime_ns == interrupted["gd_mtime"]
    assert len(second.steps["tad"]) == 6 - 2  # 48 rows / batch 8 = 6 steps; resumed after checkpoint 2
    steps = {s["name"]: s["steps"] for s in report["stages"]}
    assert steps == {"gd": 3, "ged": 3, "tad": 6, "tsd": 6}
    assert not (out / "tad" / "checkpoints").exists()


def test_a_finished_stage_is_not_reused_under_changed_settings(resumed_run):
    recipe, out, *_ = resumed_run
    changed = dataclasses.replace(recipe, stages=[*recipe.stages[:-1],
                                                  dataclasses.replace(recipe.stages[-1], temperature=3.0)])
    before = (out / "report.json").read_text()
    with pytest.raises(DistillError, match=r"stage 'tsd' .* other settings \(temperature: 2.0 -> 3.0\); use a new --output-dir"):
        run(changed, out)
    assert (out / "report.json").read_text() == before
    assert json.loads((out / "tsd" / STAGE_MARKER).read_text())["recipe"] == dataclasses.asdict(recipe.stages[-1])


def test_a_finished_stage_after_a_retrained_one_is_refused(resumed_run, tmp_path):
    recipe, out, *_ = resumed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "tad")
    with pytest.raises(DistillError, match=r"stage 'tsd' .* started from an older 'tad', which this run retrained"):
        run(recipe, copy)
    assert (copy / "tad" / STAGE_MARKER).is_file()  # the deleted stage was trained again, the stale one refused


def test_run_directory_report_and_final_student(resumed_run):
    recipe, out, _, _, _, report = resumed_run
    for stage in recipe.stages:
        d = out / stage.name
        assert {"config.json", "model.safetensors", "projections.pt", "dev_metrics.json", STAGE_MARKER} <= {p.name for p in d.iterdir()}
        assert list((d / "logs").rglob("events.out.tfevents*")), "TensorBoard logs"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["task"] == "sst2" and on_disk["metric"] == "accuracy"
    assert [s["name"] for s in on_disk["stages"]] == ["gd", "ged", "tad", "tsd"]
    assert {"name", "teacher", "data", "losses", "dev", "seconds"} <= set(on_disk["stages"][0])
    assert on_disk["retention"] == pytest.approx(on_disk["student"]["dev"]["accuracy"] / on_disk["teacher"]["dev"]["accuracy"])
    assert on_disk["student"]["params"] < on_disk["teacher"]["params"]
    assert (out / "report.md").read_text().startswith("# Distillation report: sst2")
    assert (out / "dev_by_stage.png").read_bytes()[:4] == b"\x89PNG"
    clf = pipeline("text-classification", model=str(out / "final"))
    assert clf("a warm, funny film")[0]["label"] in {"negative", "positive"}


@pytest.mark.parametrize("task, metric", [("mrpc", "accuracy"), ("stsb", "pearson")])
def test_pairs_and_regression_through_four_stages(tmp_path, tiny_encoder_dir, tiny_recipe, write_recipe, task, metric):
    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tiny_encoder_dir, task=task, general_steps=2, train_samples=32)))
    report = run(recipe, tmp_path / "run")
    assert report["metric"] == metric
    assert [s["name"] for s in report["stages"]] == ["gd", "ged", "tad", "tsd"]
    assert all(metric in s["dev"] for s in report["stages"])
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    if task == "stsb":
        assert final.config.num_labels == 1 and final.config.problem_type == "regression"
    else:
        assert final.config.id2label == {0: "not_equivalent", 1: "equivalent"}
    clf = pipeline("text-classification", model=str(tmp_path / "run" / "final"))
    assert len(clf({"text": "He left early.", "text_pair": "He departed before the end."})) >= 1


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("extra, message", [
    (["--student.bogus", "1"], "unknown key"),
    (["--general.files", "[/no/such/corpus.txt]"], "does not exist"),
    (["--task.name", "nosuch"], "unknown task"),
])
def test_bad_recipe_inputs_are_one_line_errors_before_any_work(tmp_path, capsys, tiny_bert_dir, tiny_recipe,
                                                                write_recipe, extra, message):
    config = write_recipe(tmp_path, tiny_recipe(tiny_bert_dir))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out"), *extra]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_teacher_with_other_labels_and_missing_recipe_are_one_line_errors(tmp_path, capsys, tiny_bert_dir,
                                                                          tiny_recipe, write_recipe):
    config = write_recipe(tmp_path, tiny_recipe(tiny_bert_dir, task="mrpc", finetuned=tiny_bert_dir))
    assert main(["--config", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "labels ['negative', 'positive']" in err and "mrpc" in err
    assert not (tmp_path / "out").exists()
    assert main(["--config", str(tmp_path / "missing.yaml"), "--output-dir", str(tmp_path / "out")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_cli_prints_one_line_error_without_traceback(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe):
    config = write_recipe(tmp_path, tiny_recipe(tiny_bert_dir, task="stsb", finetuned=tiny_bert_dir))
    proc = subprocess.run([sys.executable, "-m", "compressor.distill", "--config", str(config), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True, env=_subprocess_env(), timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "\n" not in proc.stderr.strip(), proc.stderr[-2000:]
    assert "regression" in proc.stderr


def test_two_process_ddp_on_cpu_produces_a_student(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe):
    recipe = tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir)
    recipe["stages"] = [recipe["stages"][0], recipe["stages"][3]]  # one general-corpus stage, one task stage
    config = write_recipe(tmp_path, recipe)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "compressor.distill", "--config", str(config), "--output-dir", str(out)],
                          capture_output=True, text=True, env=_subprocess_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("# Distillation report") == 1  # only rank 0 reports
    report = json.loads((out / "report.json").read_text())
    # 48 task rows, 8 per process, 2 processes: 3 optimiser steps; the streamed stage runs max_steps
    assert {s["name"]: s["steps"] for s in report["stages"]} == {"gd": 3, "tsd": 3}
    final = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert final.config.num_hidden_layers == 4 and final.config.id2label == {0: "negative", 1: "positive"}


def test_an_mpnet_teacher_runs_all_four_stages(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe):
    """The full-scale teacher is MPNet (all-mpnet-base-v2): no token_type_ids, no type_vocab_size."""
    import torch
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    encoder = tmp_path / "tiny_mpnet"
    MPNetModel(MPNetConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64)).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(encoder)
    report = run(load_recipe(write_recipe(tmp_path, tiny_recipe(encoder, general_steps=2, train_samples=32))),
                 tmp_path / "run")
    assert [s["name"] for s in report["stages"]] == ["gd", "ged", "tad", "tsd"]
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final").config.model_type == "bert"


class LabelRecorder(DistillationCallback):
    """Per stage: every batch's rows (padding removed), their labels, and the loss terms."""

    def __init__(self):
        self.steps: dict[str, list[dict]] = {}

    def on_distill_step(self, args, state, control, *, teacher, inputs, losses):
        self.steps.setdefault(Path(args.output_dir).parent.name, []).append({
            "rows": [tuple(r[m.bool()].tolist()) for r, m in zip(inputs["input_ids"], inputs["attention_mask"])],
            "labels": inputs["labels"].tolist() if "labels" in inputs else None,
            "losses": {k: float(v) for k, v in losses.items()}})


def test_a_pruned_student_with_a_transfer_set_through_the_task_stages(tmp_path, tiny_encoder_dir, tiny_recipe,
                                                                      write_recipe, glue_dir):
    """student.init: pruned from the fine-tuned teacher; TAD and TSD train on task rows plus transfer sentences,
    which carry no gold label (NO_LABEL) while every task row keeps its own; the pruned start is in the report."""
    from compressor.losses import NO_LABEL

    data = tiny_recipe(tiny_encoder_dir, general_steps=2, train_samples=32)
    data["student"] = {"num_hidden_layers": 1, "hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 4,
                       "init": "pruned", "prune_from": "finetuned", "prune": {"samples": 16, "max_seq_length": 32}}
    data["augment"] = {"transfer": {"max_examples": 24}}
    for stage in data["stages"][2:]:
        stage["augment"] = True
    recipe = load_recipe(write_recipe(tmp_path, data))
    recorder = LabelRecorder()
    report = run(recipe, tmp_path / "run", callbacks=[recorder])

    pruned = report["pruned"]
    assert pruned["prune_from"] == "finetuned" and len(pruned["layers"]) == 1
    assert pruned["layer_choice"]["method"] in {"uniform", "importance"} and "accuracy" in pruned["dev"]
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final")
    assert final.config.pruned_from["layers"] == pruned["layers"] and final.config.hidden_size == 24

    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    task = tokenize_task(load_task_data(recipe.task), tokenizer, 32)["train"]
    gold = {tuple(r): l for r, l in zip(task["input_ids"], task["labels"])}
    for name in ("tad", "tsd"):
        stage = next(s for s in report["stages"] if s["name"] == name)
        assert stage["rows"] == {"task": 32, "transfer": 24}
        seen = [(row, label) for step in recorder.steps[name] for row, label in zip(step["rows"], step["labels"])]
        assert len(seen) == 56  # one epoch over task + transfer rows
        transfer = [(row, label) for row, label in seen if row not in gold]
        assert len(transfer) == 24 and {label for _, label in transfer} == {NO_LABEL}
        assert all(label == gold[row] for row, label in seen if row in gold)
    assert all("hard" in step["losses"] and step["losses"]["hard"] >= 0 for step in recorder.steps["tsd"])


def test_teacher_dev_metrics_run_on_the_training_device(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe, monkeypatch):
    """The teacher is evaluated where training runs (CUDA on a GPU machine), not on the CPU it was loaded on.
    Here the training device is faked as ``meta`` and evaluation is replaced by a probe of the model's device."""
    import torch

    import compressor.distill as distill

    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir)))
    r = distill.Run(recipe, tmp_path / "run")
    (tmp_path / "run").mkdir()
    r.device = torch.device("meta")
    seen = []
    monkeypatch.setattr(distill, "evaluate", lambda model, *a, **k: seen.append(next(model.parameters()).device) or {"accuracy": 0.5})
    assert r.teacher_dev() == {"accuracy": 0.5}
    assert seen == [torch.device("meta")]


def _general_only(tiny_recipe, teacher, steps: int) -> dict:
    recipe = tiny_recipe(teacher, finetuned=teacher, general_steps=steps)
    recipe["stages"] = [recipe["stages"][0]]
    return recipe


def test_a_killed_general_stage_resumes_at_its_position_without_rereading_the_corpus(tmp_path, tiny_bert_dir, tiny_recipe,
                                                                                     write_recipe, monkeypatch):
    """GD killed after step 3 (checkpoint at 2) continues with the batches an uninterrupted run trains on at steps
    3-5; the resumed run tokenises nothing and reads from the packed corpus only the blocks it trains on (the
    streamed corpus it replaces re-read and re-tokenised every block before the resume point)."""
    import datasets
    from transformers import PreTrainedTokenizerBase

    recipe = load_recipe(write_recipe(tmp_path, _general_only(tiny_recipe, tiny_bert_dir, steps=5)))
    reference = Recorder()
    run(recipe, tmp_path / "reference", callbacks=[reference])
    with pytest.raises(SimulatedKill):
        run(recipe, tmp_path / "run", callbacks=[Recorder(kill_at=("gd", 3))])

    tokenised, served = [], []
    real_call, real_getitems = PreTrainedTokenizerBase.__call__, datasets.Dataset.__getitems__

    def tokenise(self, text=None, *a, **k):
        if k.get("add_special_tokens") is False:  # the corpus packer's call (task data keeps special tokens)
            tokenised.append(len(text))
        return real_call(self, text, *a, **k)

    def getitems(self, keys):
        if self.column_names == ["input_ids"]:
            served.append(len(keys))
        return real_getitems(self, keys)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", tokenise)
    monkeypatch.setattr(datasets.Dataset, "__getitems__", getitems)
    resumed = Recorder()
    run(recipe, tmp_path / "run", callbacks=[resumed])
    assert [s["rows"] for s in resumed.steps["gd"]] == [s["rows"] for s in reference.steps["gd"][2:]]
    # three batches trained on, plus the one accelerate's loader fetches ahead; skipping steps 1-2 read nothing
    assert tokenised == [] and sum(served) == (3 + 1) * 8


DDP_DRIVER = """
import json, os, sys
from compressor.config import load_recipe
from compressor.distill import run
from compressor.trainer import DistillationCallback

class Rows(DistillationCallback):
    rows = []
    def on_distill_step(self, args, state, control, *, teacher, inputs, losses):
        self.rows += [r[m.bool()].tolist() for r, m in zip(inputs["input_ids"], inputs["attention_mask"])]

run(load_recipe(sys.argv[1]), sys.argv[2], callbacks=[Rows()])
with open(os.path.join(sys.argv[2], f"rows-{os.environ['RANK']}.json"), "w") as f:
    json.dump(Rows.rows, f)
"""


def test_ddp_ranks_train_on_disjoint_general_corpus_blocks(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe):
    config = write_recipe(tmp_path, _general_only(tiny_recipe, tiny_bert_dir, steps=3))
    (tmp_path / "driver.py").write_text(DDP_DRIVER)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "driver.py"), str(config), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**_subprocess_env(), "PYTHONPATH": str(Path(__file__).parents[2])})  # this checkout's package
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [[tuple(r) for r in json.loads((out / f"rows-{rank}.json").read_text())] for rank in (0, 1)]
    assert [len(r) for r in rows] == [3 * 8, 3 * 8]
    assert all(len(r) == 32 for r in rows[0] + rows[1])
    assert not set(rows[0]) & set(rows[1])
