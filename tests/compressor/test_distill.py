"""``compressor.distill`` end to end with a tiny random teacher on real GLUE slices and the real corpus.

What training received is recorded through :class:`DistillationCallback` (the trainer's public hook):
which teacher produced the targets, which batches the student saw, which loss terms were computed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from compressor.data.task_data import load_task_data, tokenize_task
from compressor.distill import main, run
from compressor.modeling.trainer import DistillationCallback
from compressor.recipe.schema import load_recipe
from compressor.run.runstate import STAGE_MARKER

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
            "losses": sorted(k for k in losses if k != "loss"), "loss": float(losses["loss"])})

    def on_step_end(self, args, state, control, **kwargs):
        if self.kill_at == (Path(args.output_dir).parent.name, state.global_step):
            raise SimulatedKill(f"killed at step {state.global_step}")


@dataclass
class Resumed:
    recipe: Any
    out: Path
    first: Recorder
    second: Recorder
    interrupted: dict
    report: dict
    reference: Recorder
    reference_out: Path


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_encoder_dir, tiny_recipe, write_recipe):
    """SST-2, four stages, teacher fine-tuned here: once uninterrupted (the reference), and once killed at TAD step 3
    (checkpoint at 2), then rerun to the end. CPU, one thread, the recipe's seed: the two must end alike."""
    folder = tmp_path_factory.mktemp("resume")
    recipe = load_recipe(write_recipe(folder, tiny_recipe(tiny_encoder_dir)))
    reference = Recorder()
    run(recipe, folder / "reference", callbacks=[reference])
    out = folder / "run"
    first, second = Recorder(kill_at=("tad", 3)), Recorder()
    with pytest.raises(SimulatedKill):
        run(recipe, out, callbacks=[first])
    interrupted = {"tad_marker": (out / "tad" / STAGE_MARKER).exists(),
                   "checkpoints": sorted(p.name for p in (out / "tad" / "checkpoints").iterdir()),
                   "gd_mtime": (out / "gd" / STAGE_MARKER).stat().st_mtime_ns}
    report = run(recipe, out, callbacks=[second])
    return Resumed(recipe, out, first, second, interrupted, report, reference, folder / "reference")


def test_each_stage_uses_the_teacher_data_and_losses_its_recipe_names(resumed_run, tiny_encoder_dir, glue_dir):
    recipe, out = resumed_run.recipe, resumed_run.out
    seen = {**resumed_run.first.steps, **resumed_run.second.steps}  # gd/ged ran in the first run, tad/tsd in the second
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
    r = resumed_run
    assert not r.interrupted["tad_marker"] and r.interrupted["checkpoints"] == ["checkpoint-2"]
    assert set(r.first.steps) == {"gd", "ged", "tad"} and len(r.first.steps["tad"]) == 3
    assert set(r.second.steps) == {"tad", "tsd"}  # no finished stage repeated
    assert (r.out / "gd" / STAGE_MARKER).stat().st_mtime_ns == r.interrupted["gd_mtime"]
    assert len(r.second.steps["tad"]) == 6 - 2  # 48 rows / batch 8 = 6 steps; resumed after checkpoint 2
    steps = {s["name"]: s["steps"] for s in r.report["stages"]}
    assert steps == {"gd": 3, "ged": 3, "tad": 6, "tsd": 6}
    assert not (r.out / "tad" / "checkpoints").exists()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(folder / "model.safetensors")
    if (folder / "projections.pt").is_file():
        tensors.update({f"projections.{k}": v for k, v in torch.load(folder / "projections.pt").items()})
    return tensors


def test_a_resumed_run_sees_the_batches_and_ends_with_the_weights_of_an_uninterrupted_one(resumed_run):
    r = resumed_run
    rows = lambda steps: [s["rows"] for s in steps]  # noqa: E731
    assert rows(r.first.steps["tad"][:2] + r.second.steps["tad"]) == rows(r.reference.steps["tad"])
    assert rows(r.second.steps["tsd"]) == rows(r.reference.steps["tsd"])
    for name in ("teacher", "gd", "ged", "tad", "tsd", "final"):
        ours, reference = _weights(r.out / name), _weights(r.reference_out / name)
        assert ours.keys() == reference.keys(), name
        different = [k for k in ours if not torch.equal(ours[k], reference[k])]
        assert not different, f"{name}: {different[:3]}"
    assert r.report["student"]["dev"] == json.loads((r.reference_out / "report.json").read_text())["student"]["dev"]


def test_every_stage_moved_its_student_and_the_loss_fell(resumed_run):
    """A stage that trains nothing (a zero learning rate, a frozen student) fails here."""
    r = resumed_run
    folders = [r.out / s.name for s in r.recipe.stages]
    for before, after in zip(folders, folders[1:]):
        a, b = _weights(before), _weights(after)
        assert any(not torch.equal(a[k], b[k]) for k in a if k in b), f"{after.name} did not change {before.name}'s student"
    for name, steps in {**r.first.steps, **r.second.steps}.items():
        losses = [s["loss"] for s in steps]
        assert min(losses[len(losses) // 2:]) < losses[0], f"{name}: loss never fell below its first value {losses}"


def test_run_directory_report_and_final_student(resumed_run, glue_dir):
    recipe, out, report = resumed_run.recipe, resumed_run.out, resumed_run.report
    for stage in recipe.stages:
        d = out / stage.name
        assert {"config.json", "model.safetensors", "projections.pt", "dev_metrics.json", "fingerprint.json",
                STAGE_MARKER} <= {p.name for p in d.iterdir()}
        assert list((d / "logs").rglob("events.out.tfevents*")), "TensorBoard logs"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["task"] == "sst2" and on_disk["metric"] == "accuracy"
    assert [s["name"] for s in on_disk["stages"]] == ["gd", "ged", "tad", "tsd"]
    assert {"name", "teacher", "data", "losses", "dev", "seconds", "fingerprint"} <= set(on_disk["stages"][0])
    assert on_disk["retention"] == pytest.approx(on_disk["student"]["dev"]["accuracy"] / on_disk["teacher"]["dev"]["accuracy"])
    assert on_disk["student"]["params"] < on_disk["teacher"]["params"]
    assert (out / "report.md").read_text().startswith("# Distillation report: sst2")
    assert (out / "dev_by_stage.png").read_bytes()[:4] == b"\x89PNG"
    # final/ is the reported student: anyone's pipeline over the dev slice gets the report's accuracy
    assert _pipeline_metric(out / "final", recipe.task) == pytest.approx(on_disk["student"]["dev"]["accuracy"],
                                                                         abs=_same_model_tolerance("accuracy", recipe))


def _same_model_tolerance(metric: str, recipe) -> float:
    """How far the pipeline's metric may be from the report's when both measure the same model: the pipeline
    runs one example at a time, the report padded batches, so logits differ in the last float32 bits (by CPU
    model too). A correlation moves by about 1e-5 from that (1.6e-5 seen); an accuracy can only move if a
    near-tie flips, one example. Another model (the wrong checkpoint, an untrained head) moves either by far
    more."""
    return 1e-3 if metric in ("pearson", "spearmanr", "matthews_correlation") else 1.0 / recipe.task.max_eval_samples


def _pipeline_metric(model_dir: Path, task_cfg) -> float:
    """The task's main dev metric of ``pipeline("text-classification")`` on the recipe's dev slice."""
    from compressor.data.task_data import task_spec
    from compressor.modeling.metrics import compute_metrics

    task = task_spec(task_cfg)
    dev = load_task_data(task_cfg)["validation"]
    clf = pipeline("text-classification", model=str(model_dir), function_to_apply="none", top_k=None)
    inputs = [{"text": r["text_a"], "text_pair": r["text_b"]} if task.is_pair else r["text_a"] for r in dev]
    logits = []
    for scores in clf(inputs):
        by_label = {s["label"]: s["score"] for s in (scores if isinstance(scores, list) else [scores])}
        logits.append([by_label[clf.model.config.id2label[i]] for i in range(clf.model.config.num_labels)])
    import numpy as np

    return compute_metrics(task, np.array(logits), np.array(dev["label"]))[task.metric]


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
    # sentence pairs go through anyone's pipeline as pairs: it reproduces the report's dev metric
    assert _pipeline_metric(tmp_path / "run" / "final", recipe.task) == pytest.approx(report["student"]["dev"][metric],
                                                                                       abs=_same_model_tolerance(metric, recipe))


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
    from compressor.modeling.losses import NO_LABEL

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


def test_teacher_dev_metrics_are_measured_once_and_are_what_a_pipeline_measures(tmp_path, tiny_bert_dir, tiny_recipe,
                                                                                write_recipe, monkeypatch):
    """The report's teacher figure is the fine-tuned teacher's dev metric, the one anyone's pipeline measures on the
    recipe's dev slice; measured once (a rerun reads ``teacher_dev.json``), and again when what it depends on
    changed (a record under another fingerprint is a stale cache, not an error)."""
    from compressor.run import context
    from compressor.run.publish import TEACHER_DEV, teacher_dev

    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir)))
    (tmp_path / "run").mkdir()
    ctx = context.RunContext(recipe, tmp_path / "run")
    measured, real = [], context.evaluate
    monkeypatch.setattr(context, "evaluate", lambda model, *a, **k: measured.append(model) or real(model, *a, **k))
    dev = teacher_dev(ctx)
    assert dev["accuracy"] == pytest.approx(_pipeline_metric(tiny_bert_dir, recipe.task),
                                            abs=_same_model_tolerance("accuracy", recipe))
    assert teacher_dev(ctx) == dev
    assert len(measured) == 1
    record = tmp_path / "run" / TEACHER_DEV
    record.write_text(json.dumps({"fingerprint": "another teacher", "dev": {"accuracy": -1.0}}))
    assert teacher_dev(ctx) == dev
    assert len(measured) == 2


def test_teacher_dev_metrics_run_on_the_training_device(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe,
                                                        monkeypatch):
    """The teacher is evaluated where training runs (CUDA on a GPU machine), not on the CPU it was loaded on. Here
    the training device is faked as ``meta`` and evaluation replaced by a probe of the model's device."""
    from compressor.run import context
    from compressor.run.publish import teacher_dev

    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir)))
    (tmp_path / "run").mkdir()
    ctx = context.RunContext(recipe, tmp_path / "run")
    ctx.device = torch.device("meta")
    seen = []
    monkeypatch.setattr(context, "evaluate", lambda model, *a, **k: seen.append(next(model.parameters()).device) or {})
    teacher_dev(ctx)
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
import compressor.distill as distill
from compressor.modeling.trainer import DistillationCallback

class Rows(DistillationCallback):
    rows = {}
    def on_distill_step(self, args, state, control, *, teacher, inputs, losses):
        stage = os.path.basename(os.path.dirname(args.output_dir))
        self.rows.setdefault(stage, []).extend(
            r[m.bool()].tolist() for r, m in zip(inputs["input_ids"], inputs["attention_mask"]))

real_run = distill.run
distill.run = lambda recipe, out, callbacks=None, **kw: real_run(recipe, out, callbacks=[Rows()], **kw)
code = distill.main(["--config", sys.argv[1], "--output-dir", sys.argv[2], "--export"])
with open(os.path.join(sys.argv[2], f"rows-{os.environ['RANK']}.json"), "w") as f:
    json.dump(Rows.rows, f)
sys.exit(code)
"""


def test_two_ddp_ranks_train_on_disjoint_rows_that_cover_the_task_data(tmp_path, tiny_bert_dir, tiny_recipe,
                                                                       write_recipe, glue_dir):
    """``torchrun`` with two CPU processes through the CLI: in the general-corpus stage the ranks train on disjoint
    packed blocks; in the task stage on disjoint rows that together are the task slice, each row once; only rank 0
    reports and exports (the other waits), and the student is a normal classifier."""
    recipe = tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir)
    recipe["stages"] = [recipe["stages"][0], recipe["stages"][3]]  # one general-corpus stage, one task stage
    config = write_recipe(tmp_path, recipe)
    (tmp_path / "driver.py").write_text(DDP_DRIVER)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "driver.py"), str(config), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**_subprocess_env(), "PYTHONPATH": str(Path(__file__).parents[2])})  # this checkout's package
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("# Distillation report") == 1  # only rank 0 reports
    assert proc.stdout.count("export: ") == 1 and (out / "export" / "export.json").is_file()
    rows = [{k: [tuple(r) for r in v] for k, v in json.loads((out / f"rows-{rank}.json").read_text()).items()}
            for rank in (0, 1)]
    # general corpus: 3 steps x 8 blocks of 32 tokens per rank, no block on both ranks
    assert [len(r["gd"]) for r in rows] == [3 * 8, 3 * 8]
    assert all(len(b) == 32 for b in rows[0]["gd"] + rows[1]["gd"])
    assert not set(rows[0]["gd"]) & set(rows[1]["gd"])
    # task data: 48 rows, 8 per process and step: 3 steps each, 24 rows each, together the whole slice once
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    task_rows = sorted(tuple(r) for r in tokenize_task(load_task_data(load_recipe(config).task), tokenizer, 32)["train"]["input_ids"])
    assert [len(r["tsd"]) for r in rows] == [24, 24]
    assert sorted(rows[0]["tsd"] + rows[1]["tsd"]) == task_rows
    report = json.loads((out / "report.json").read_text())
    assert {s["name"]: s["steps"] for s in report["stages"]} == {"gd": 3, "tsd": 3}
    final = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert final.config.num_hidden_layers == 4 and final.config.id2label == {0: "negative", 1: "positive"}
