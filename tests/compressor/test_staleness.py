"""A run folder's results are reused only under the inputs they were made from (compressor/run/runstate.py).

For each kind of input (task slice and data, teachers, teacher settings, student shape, corpus, seed, stage
settings, a resumed stage's batch size): changed -> refused with one line naming what changed, before any
work; unchanged -> reused; the run folder (or the data) moved to another path -> reused.
"""
from __future__ import annotations

import copy
import gzip
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoModelForSequenceClassification

from compressor.distill import main, run
from compressor.modeling.trainer import DistillationCallback
from compressor.recipe.schema import recipe_from_dict
from compressor.run.finetune import finetune_teacher
from compressor.run.runstate import FINGERPRINT_FILE, STAGE_MARKER, StaleError

pytestmark = pytest.mark.slow


class Steps(DistillationCallback):
    """Counts the optimiser steps each stage trains; can 'kill' the run at a stage's step."""

    def __init__(self, kill_at: tuple[str, int] | None = None):
        self.steps: dict[str, int] = {}
        self.kill_at = kill_at

    def on_distill_step(self, args, state, control, **kwargs):
        name = Path(args.output_dir).parent.name
        self.steps[name] = self.steps.get(name, 0) + 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.kill_at == (Path(args.output_dir).parent.name, state.global_step):
            raise KeyboardInterrupt(f"killed at step {state.global_step}")


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _recipe(data: dict):
    return recipe_from_dict(copy.deepcopy(data))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_bert_dir, tiny_recipe):
    """A finished two-stage run (GD on the corpus, TSD on SST-2) with a given fine-tuned teacher."""
    folder = tmp_path_factory.mktemp("finished")
    data = tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir, general_steps=2, train_samples=32)
    data["stages"] = [data["stages"][0], data["stages"][3]]
    report = run(_recipe(data), folder / "run")
    return SimpleNamespace(data=data, out=folder / "run", report=report, folder=folder)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory, tiny_bert_dir, glue_dir, corpus_file):
    """Inputs that differ from the fixture's in content only: a teacher with one weight moved, an SST-2 folder
    with one training sentence changed, another corpus file."""
    folder = tmp_path_factory.mktemp("other")
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    teacher.classifier.bias.data += 1e-3
    teacher.save_pretrained(folder / "teacher")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny_bert_dir / name, folder / "teacher" / name)
    glue = folder / "glue" / "SST-2"
    shutil.copytree(glue_dir / "SST-2", glue)
    lines = (glue / "train.tsv").read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("the", "a", 1) if "the" in lines[1] else "changed " + lines[1]
    (glue / "train.tsv").write_text("".join(lines))
    with gzip.open(corpus_file, "rt") as f:
        (folder / "corpus.txt").write_text("".join(line for _, line in zip(range(3000), f)))
    return SimpleNamespace(teacher=folder / "teacher", glue=folder / "glue", corpus=folder / "corpus.txt")


def _set(section: str, key: str, value):
    def change(d: dict, env) -> None:
        d[section][key] = value(env) if callable(value) else value
    return change


def _stage(name: str, key: str, value):
    def change(d: dict, env) -> None:
        next(s for s in d["stages"] if s["name"] == name)[key] = value
    return change


CHANGES = {
    "task slice": (_set("task", "max_train_samples", 24), "stage 'gd'", "task.max_train_samples: 32 -> 24"),
    "dev slice": (_set("task", "max_eval_samples", 16), "stage 'gd'", "task.max_eval_samples: 32 -> 16"),
    "task data": (_set("task", "glue_dir", lambda env: str(env.glue)), "stage 'gd'", "task.data.train: \"sha256:"),
    "fine-tuned teacher": (_set("teacher", "finetuned", lambda env: str(env.teacher)), "stage 'gd'",
                           "teacher.finetuned: \"sha256:"),
    "pretrained teacher": (_set("teacher", "pretrained", lambda env: str(env.encoder)), "stage 'gd'",
                           "teacher.pretrained: \"sha256:"),
    "student shape": (_set("student", "hidden_size", 32), "stage 'gd'", "student.hidden_size: 24 -> 32"),
    "corpus slice": (_set("general", "max_blocks", 300), "stage 'gd'", "general.max_blocks: 400 -> 300"),
    "corpus": (_set("general", "files", lambda env: [str(env.corpus)]), "stage 'gd'", "general.files: [\"sha256:"),
    "seed": (lambda d, env: d.update(seed=7), "stage 'gd'", "seed: 42 -> 7"),
    "stage settings": (_stage("tsd", "temperature", 3.0), "stage 'tsd'", "stages.tsd.temperature: 2.0 -> 3.0"),
    "an earlier stage": (_stage("gd", "learning_rate", 5e-4), "stage 'gd'", "stages.gd.learning_rate: 0.001 -> 0.0005"),
}


@pytest.mark.parametrize("case", list(CHANGES))
def test_a_changed_input_is_refused_with_one_line_before_any_work(case, finished, other_data, tiny_encoder_dir):
    change, refused, named = CHANGES[case]
    data = copy.deepcopy(finished.data)
    change(data, SimpleNamespace(**vars(other_data), encoder=tiny_encoder_dir))
    before = _tree(finished.out)
    with pytest.raises(StaleError) as err:
        run(_recipe(data), finished.out)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{refused} in {finished.out}"), message
    assert named in message, message
    assert f"use a new --output-dir, or delete {finished.out / refused.split(chr(39))[1]}" in message
    assert _tree(finished.out) == before


def test_an_unchanged_recipe_reuses_every_result(finished):
    before = _tree(finished.out / "gd"), _tree(finished.out / "tsd")
    steps = Steps()
    assert run(_recipe(finished.data), finished.out, callbacks=[steps]) == finished.report
    assert steps.steps == {}
    assert (_tree(finished.out / "gd"), _tree(finished.out / "tsd")) == before


def test_a_moved_run_folder_is_reused(finished, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(finished.out, moved)
    shutil.move(finished.out, finished.folder / "away")  # nothing may be read from the old place
    try:
        steps = Steps()
        report = run(_recipe(finished.data), moved, callbacks=[steps])
    finally:
        shutil.move(finished.folder / "away", finished.out)
    assert steps.steps == {}
    assert [s["fingerprint"] for s in report["stages"]] == [s["fingerprint"] for s in finished.report["stages"]]


def test_the_same_data_at_another_path_is_reused(finished, tmp_path, glue_dir, corpus_file):
    (tmp_path / "glue").mkdir()
    shutil.copytree(glue_dir / "SST-2", tmp_path / "glue" / "SST-2")
    shutil.copy(corpus_file, tmp_path / "corpus.txt.gz")
    data = copy.deepcopy(finished.data)
    data["task"]["glue_dir"], data["general"]["files"] = str(tmp_path / "glue"), [str(tmp_path / "corpus.txt.gz")]
    steps = Steps()
    run(_recipe(data), finished.out, callbacks=[steps])
    assert steps.steps == {}


def test_a_stage_after_a_changed_one_is_refused_though_its_own_settings_are_the_same(finished, tmp_path):
    """The chain: GD's folder deleted and its learning rate changed; TSD, trained from the old GD, is refused
    (naming GD's change) before GD is trained again."""
    out = tmp_path / "run"
    shutil.copytree(finished.out, out)
    shutil.rmtree(out / "gd")
    data = copy.deepcopy(finished.data)
    data["stages"][0]["learning_rate"] = 5e-4
    with pytest.raises(StaleError, match=r"^stage 'tsd' .* \(stages\.gd\.learning_rate: 0\.001 -> 0\.0005\)"):
        run(_recipe(data), out)
    assert not (out / "gd").exists()


def test_a_folder_without_a_fingerprint_is_refused(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished.out, out)
    (out / "tsd" / FINGERPRINT_FILE).unlink()
    with pytest.raises(StaleError, match=r"^stage 'tsd' .* is finished but has no fingerprint.json .* delete "):
        run(_recipe(finished.data), out)


def test_an_interrupted_stage_resumes_only_under_the_batch_size_it_started_with(tmp_path, capsys, tiny_bert_dir,
                                                                               tiny_recipe, write_recipe):
    """TSD killed after its checkpoint at step 2: a new batch size would skip the wrong rows, so it is refused
    (through the CLI: one line); the same recipe resumes at step 3 and trains only the steps left; so does the
    folder moved elsewhere."""
    data = tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir, train_samples=32)
    data["stages"] = [data["stages"][3]]
    config, out = write_recipe(tmp_path, data), tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(_recipe(data), out, callbacks=[Steps(kill_at=("tsd", 3))])
    assert (out / "tsd" / "checkpoints" / "checkpoint-2").is_dir() and not (out / "tsd" / STAGE_MARKER).exists()

    before = _tree(out)
    capsys.readouterr()  # the killed run's progress bars
    assert main(["--config", str(config), "--output-dir", str(out), "--stages.tsd.batch_size", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: stage 'tsd' in {out / 'tsd'} was interrupted (with checkpoints) under other inputs "
                          f"(stages.tsd.batch_size: 8 -> 4)") and "\n" not in err, err
    assert _tree(out) == before

    moved = tmp_path / "moved"
    shutil.move(out, moved)
    steps = Steps()
    report = run(_recipe(data), moved, callbacks=[steps])
    assert steps.steps == {"tsd": 4 - 2} and report["stages"][0]["steps"] == 4


@pytest.fixture(scope="module")
def finished_with_teacher(tmp_path_factory, tiny_encoder_dir, tiny_recipe):
    """A finished one-stage run whose teacher was fine-tuned in it (``teacher/``)."""
    folder = tmp_path_factory.mktemp("with_teacher")
    data = tiny_recipe(tiny_encoder_dir, train_samples=32)
    data["stages"] = [data["stages"][3]]
    run(_recipe(data), folder / "run")
    return SimpleNamespace(data=data, out=folder / "run", folder=folder)


def test_changed_teacher_settings_refuse_the_fine_tuned_teacher(finished_with_teacher):
    data = copy.deepcopy(finished_with_teacher.data)
    data["teacher"]["finetune"]["learning_rate"] = 5e-4
    before = _tree(finished_with_teacher.out)
    with pytest.raises(StaleError) as err:
        run(_recipe(data), finished_with_teacher.out)
    teacher = finished_with_teacher.out / "teacher"
    assert str(err.value).startswith(f"the fine-tuned teacher in {teacher} was finished under other inputs "
                                     f"(teacher.finetune.learning_rate: 0.001 -> 0.0005); use a new --output-dir, "
                                     f"or delete {teacher} and the result folders made from it")
    assert _tree(finished_with_teacher.out) == before


def test_a_fine_tuned_teacher_is_reused_unchanged_and_moved(finished_with_teacher, tmp_path):
    weights = (finished_with_teacher.out / "teacher" / "model.safetensors").stat().st_mtime_ns
    steps = Steps()
    run(_recipe(finished_with_teacher.data), finished_with_teacher.out, callbacks=[steps])
    assert steps.steps == {}
    assert (finished_with_teacher.out / "teacher" / "model.safetensors").stat().st_mtime_ns == weights
    moved = tmp_path / "moved"
    shutil.copytree(finished_with_teacher.out, moved)
    run(_recipe(finished_with_teacher.data), moved, callbacks=[steps])
    assert steps.steps == {}


def test_finetune_on_its_own_refuses_a_teacher_made_under_other_settings(finished_with_teacher, tmp_path):
    """``compressor.finetune`` checks the same fingerprint: the teacher folder as the run made it is reused from
    another path, and refused under another learning rate."""
    recipe = _recipe(finished_with_teacher.data)
    moved = tmp_path / "teacher"
    shutil.copytree(finished_with_teacher.out / "teacher", moved)
    assert finetune_teacher(recipe, moved)[0] == str(moved)
    other = copy.deepcopy(recipe)
    other.teacher.finetune.learning_rate = 5e-4
    with pytest.raises(StaleError, match=r"teacher.finetune.learning_rate: 0.001 -> 0.0005"):
        finetune_teacher(other, moved)


@pytest.fixture(scope="module")
def pruned_augmented(tmp_path_factory, tiny_bert_dir, tiny_recipe):
    """A finished run whose student is pruned from the fine-tuned teacher (``pruned/``) and whose one stage, TSD,
    trains on task rows plus a transfer set (``augment: true``)."""
    folder = tmp_path_factory.mktemp("pruned")
    data = tiny_recipe(tiny_bert_dir, finetuned=tiny_bert_dir, train_samples=32)
    data["student"] = {"num_hidden_layers": 1, "hidden_size": 24, "intermediate_size": 48, "num_attention_heads": 4,
                       "init": "pruned", "prune_from": "finetuned", "prune": {"samples": 16, "max_seq_length": 32}}
    data["augment"] = {"transfer": {"max_examples": 16}}
    data["stages"] = [{**data["stages"][3], "augment": True}]
    report = run(_recipe(data), folder / "run")
    return SimpleNamespace(data=data, out=folder / "run", report=report)


PRUNED_CHANGES = {
    "prune settings": (lambda d: d["student"]["prune"].update(samples=8), "the pruned start", "pruned",
                       "student.prune.samples: 16 -> 8"),
    "prune source": (lambda d: d["student"].update(prune_from="pretrained"), "the pruned start", "pruned",
                     "student.prune_from: \"finetuned\" -> \"pretrained\""),
    "pruned shape": (lambda d: d["student"].update(intermediate_size=32), "the pruned start", "pruned",
                     "student.intermediate_size: 48 -> 32"),
    "calibration data (task slice)": (lambda d: d["task"].update(max_train_samples=24), "the pruned start", "pruned",
                                      "task.max_train_samples: 32 -> 24"),
    "transfer set": (lambda d: d["augment"]["transfer"].update(max_examples=8), "stage 'tsd'", "tsd",
                     "augment.transfer.max_examples: 16 -> 8, augment.data: "),
}


@pytest.mark.parametrize("case", list(PRUNED_CHANGES))
def test_the_pruned_start_and_an_augmented_stage_are_refused_under_changed_inputs(case, pruned_augmented):
    change, what, folder, named = PRUNED_CHANGES[case]
    data = copy.deepcopy(pruned_augmented.data)
    change(data)
    before = _tree(pruned_augmented.out)
    with pytest.raises(StaleError) as err:
        run(_recipe(data), pruned_augmented.out)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{what} in {pruned_augmented.out / folder} was finished "
                                                      "under other inputs"), message
    assert named in message and f"delete {pruned_augmented.out / folder} and the stage folders after it" in message
    assert _tree(pruned_augmented.out) == before


def test_the_pruned_start_and_an_augmented_stage_are_reused_unchanged_and_moved(pruned_augmented, tmp_path):
    before = _tree(pruned_augmented.out)
    steps = Steps()
    assert run(_recipe(pruned_augmented.data), pruned_augmented.out, callbacks=[steps]) == pruned_augmented.report
    assert steps.steps == {}
    changed = {k for k, mtime in _tree(pruned_augmented.out).items() if before.get(k) != mtime}
    assert not {k for k in changed if k.startswith(("pruned/", "tsd/", "augment/"))}, changed
    moved = tmp_path / "moved"
    shutil.copytree(pruned_augmented.out, moved)
    report = run(_recipe(pruned_augmented.data), moved, callbacks=[steps])
    assert steps.steps == {}
    assert report["pruned"]["fingerprint"] == pruned_augmented.report["pruned"]["fingerprint"]
    assert report["stages"][0]["fingerprint"] == pruned_augmented.report["stages"][0]["fingerprint"]
    assert report["stages"][0]["rows"] == {"task": 32, "transfer": 16}
