"""Teacher fine-tuning: a real HF classifier with the task's labels, dev metrics, reuse of a finished run."""
from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoModelForSequenceClassification

from compressor.recipe.schema import FinetuneConfig, Recipe, TaskConfig, TeacherConfig
from compressor.recipe.tasks import GLUE_TASKS, label_maps
from compressor.run.finetune import finetune_teacher
from runtime.classifier import is_pair_task


def test_finetune_writes_a_labelled_classifier_and_is_reused(tmp_path, tiny_bert_dir, glue_dir):
    task = TaskConfig(name="cola", glue_dir=str(glue_dir), max_train_samples=64, max_eval_samples=64)
    ft = FinetuneConfig(epochs=1, batch_size=16, max_seq_length=32, learning_rate=1e-3)
    recipe = Recipe(task=task, teacher=TeacherConfig(pretrained=str(tiny_bert_dir), finetune=ft))
    path, metrics = finetune_teacher(recipe, tmp_path / "teacher", report_to=[])
    assert set(metrics) >= {"matthews_correlation", "accuracy"}
    model = AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.id2label == {0: "unacceptable", 1: "acceptable"}
    saved = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert saved["finetuning_task"] == "cola" and is_pair_task(saved) is False
    assert json.loads((tmp_path / "teacher" / "dev_metrics.json").read_text()) == metrics
    assert not (tmp_path / "teacher" / "checkpoints").exists()
    mtime = (tmp_path / "teacher" / "model.safetensors").stat().st_mtime
    assert finetune_teacher(recipe, tmp_path / "teacher")[1] == metrics
    assert (tmp_path / "teacher" / "model.safetensors").stat().st_mtime == mtime


def test_finetune_cli_bad_input_is_one_line(tmp_path, tiny_bert_dir):
    out = subprocess.run([sys.executable, "-m", "compressor.finetune", "--model", str(tiny_bert_dir), "--task", "sst2",
                          "--glue-dir", str(tmp_path / "no_glue"), "--output-dir", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "train.tsv" in out.stderr


def test_label_maps_write_the_input_kind_that_runtime_reads():
    """Every GLUE task's kind survives a config round trip; a custom pair task (a name runtime does not
    know) is still read as a pair task."""
    from transformers import BertConfig

    from compressor.recipe.tasks import Task

    custom_pair = Task("custom", "", ("question", "answer"), "label", ("no", "yes"), "accuracy")
    for task in [*GLUE_TASKS.values(), custom_pair]:
        config = BertConfig(**label_maps(task)).to_dict()
        assert is_pair_task(config) is task.is_pair, task.name
        assert config["finetuning_task"] == task.name


def test_the_cli_states_the_recipe_defaults_and_flags_land_in_the_recipe_sections():
    """The task and schedule flags are generated from TaskConfig and FinetuneConfig: given nothing, the sections
    are their defaults; given flags, the values land in the sections they name (and are checked there)."""
    import pytest

    from compressor.finetune import build_parser
    from compressor.recipe.schema import ConfigError, parse
    from ernie_common.options import picked

    parser, sections = build_parser()
    required = ["--model", "m", "--task", "sst2", "--output-dir", "o"]
    args = parser.parse_args(required)
    assert FinetuneConfig(**picked(args, sections["finetune"])) == FinetuneConfig()
    assert TaskConfig(name="sst2", **picked(args, sections["task"])) == TaskConfig(name="sst2")
    assert picked(args, sections["recipe"]) == {"seed": Recipe().seed}
    args = parser.parse_args([*required, "--sample-rows", "8", "--max-train-samples", "50", "--epochs", "2",
                              "--text-columns", "a", "b", "--seed", "3", "--group-by-length"])
    ft, task = FinetuneConfig(**picked(args, sections["finetune"])), TaskConfig(**picked(args, sections["task"]))
    assert (ft.sample_rows, ft.epochs, ft.group_by_length, ft.learning_rate) == (8, 2.0, True, 2e-5)
    assert (task.max_train_samples, task.text_columns, args.seed) == (50, ["a", "b"], 3)
    with pytest.raises(ConfigError, match=r"^teacher\.finetune\.batch_size must be at least 1, got 0$"):
        parse(Recipe, {"teacher": {"finetune": {"batch_size": 0}}})
