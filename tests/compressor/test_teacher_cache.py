"""The teacher's outputs computed once: the same losses as the teacher on the fly (within fp16 rounding), a
resumable fill, and a cache that a changed teacher or slice never reads."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from compressor.data.task_data import load_task_data, tokenize_task
from compressor.modeling.losses import needs
from compressor.modeling.student import build_student, layer_map, make_projections
from compressor.modeling.teacher_cache import COMPLETE, ROW_COLUMN, CacheSpec, fill
from compressor.modeling.trainer import (
    DistillationCallback,
    DistillationModule,
    DistillationTrainer,
    teacher_forward,
    training_arguments,
)
from compressor.recipe.schema import Recipe, StageConfig, StudentConfig, TaskConfig
from compressor.recipe.tasks import GLUE_TASKS

LOSSES = {"hidden": 1.0, "attention": 1.0, "embedding": 1.0, "soft": 1.0, "hard": 1.0}


@pytest.fixture(scope="module")
def parts(tiny_bert_dir, glue_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    rows = tokenize_task(load_task_data(TaskConfig(name="sst2", glue_dir=str(glue_dir), max_train_samples=40)),
                         tokenizer, 32)["train"]
    return tokenizer, teacher, rows.add_column(ROW_COLUMN, list(range(len(rows))))


def _module(teacher):
    torch.manual_seed(0)
    student = build_student(StudentConfig(num_hidden_layers=2, hidden_size=24, intermediate_size=48,
                                          num_attention_heads=4), teacher, GLUE_TASKS["sst2"])
    return DistillationModule(student, make_projections(24, teacher.config.hidden_size), LOSSES,
                              layer_map(2, teacher.config.num_hidden_layers), temperature=2.0)


def _spec(module, teacher) -> CacheSpec:
    return CacheSpec.for_losses(needs({k: v for k, v in LOSSES.items() if k != "hard"}), module.layer_map, True,
                                teacher.config)


class Losses(DistillationCallback):
    def __init__(self):
        self.steps = []

    def on_distill_step(self, args, state, control, *, teacher, inputs, losses):
        self.steps.append({k: float(v) for k, v in losses.items()})


def _train(tmp_path, teacher, rows, tokenizer, cache_folder=None) -> list[dict[str, float]]:
    module = _module(copy.deepcopy(teacher))
    recorder = Losses()
    stage = StageConfig(name="tsd", losses=LOSSES, epochs=2, batch_size=8, learning_rate=1e-3)
    trainer = DistillationTrainer(model=module, teacher=teacher, train_dataset=rows, callbacks=[recorder],
                                  data_collator=DataCollatorWithPadding(tokenizer),
                                  args=training_arguments(tmp_path / "ckpt", stage, Recipe(), report_to=[],
                                                          save_strategy="no"))
    if cache_folder is not None:
        spec = _spec(module, teacher)
        trainer.teacher_cache = fill(cache_folder, rows, spec, trainer.teacher,
                                     lambda m, b: teacher_forward(m, b, spec.wants(), list(spec.attention_layers)),
                                     DataCollatorWithPadding(tokenizer), max_tokens=256, chunk_batches=2)
    trainer.train()
    return recorder.steps


def test_a_stage_from_the_cache_takes_the_losses_of_the_teacher_on_the_fly(tmp_path, parts):
    """Two epochs over 40 SST-2 rows, batches of mixed lengths: every step's every loss term agrees within fp16
    rounding of the stored outputs (hidden states, attention maps, logits), and the cache was really read."""
    tokenizer, teacher, rows = parts
    on_the_fly = _train(tmp_path / "a", teacher, rows, tokenizer)
    cached = _train(tmp_path / "b", teacher, rows, tokenizer, cache_folder=tmp_path / "cache")
    assert len(cached) == len(on_the_fly) == 10
    for a, b in zip(on_the_fly, cached):
        assert set(a) == set(b)
        for name in a:
            assert b[name] == pytest.approx(a[name], rel=5e-3, abs=1e-5), (name, a, b)
    meta = json.loads((tmp_path / "cache" / COMPLETE).read_text())
    assert meta["rows"] == len(rows) and meta["spec"]["hidden_layers"] == [0, *sorted(set(_module(teacher).layer_map))]
    # the training used the stored values: spoil them and the losses change
    hidden = np.load(tmp_path / "cache" / "hidden_0.npy", mmap_mode="r+")
    hidden[:] = 0
    hidden.flush()
    spoiled = _train(tmp_path / "c", teacher, rows, tokenizer, cache_folder=tmp_path / "cache")
    assert spoiled[0]["embedding"] != pytest.approx(cached[0]["embedding"], rel=1e-2)


def test_a_killed_fill_resumes_where_it_stopped_and_ends_as_a_fresh_one(tmp_path, parts):
    tokenizer, teacher, rows = parts
    module = _module(teacher)
    spec = _spec(module, teacher)
    calls = []

    def forward(model, batch, fail_after=None):
        calls.append(batch["input_ids"].shape[0])
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt  # killed mid-fill
        return teacher_forward(model, batch, spec.wants(), list(spec.attention_layers))

    collate = DataCollatorWithPadding(tokenizer)
    with pytest.raises(KeyboardInterrupt):
        fill(tmp_path / "killed", rows, spec, teacher, lambda m, b: forward(m, b, fail_after=4), collate,
             max_tokens=128, chunk_batches=2)
    done = json.loads((tmp_path / "killed" / "progress_0.json").read_text())["batches"]
    assert done == 4 and not (tmp_path / "killed" / COMPLETE).exists()
    calls.clear()
    resumed = fill(tmp_path / "killed", rows, spec, teacher, forward, collate, max_tokens=128, chunk_batches=2)
    total = json.loads((tmp_path / "killed" / "progress_0.json").read_text())["of"]
    assert len(calls) == total - done  # only what was missing
    fresh = fill(tmp_path / "fresh", rows, spec, teacher, forward, collate, max_tokens=128, chunk_batches=2)
    for j in spec.hidden_layers:
        np.testing.assert_array_equal(resumed.hidden[j], fresh.hidden[j])
    for j in spec.attention_layers:
        np.testing.assert_array_equal(resumed.attention[j], fresh.attention[j])
    np.testing.assert_array_equal(resumed.logits, fresh.logits)


def test_a_changed_teacher_or_slice_never_reads_the_old_cache(tmp_path, tiny_bert_dir, tiny_recipe, write_recipe,
                                                              deep_teacher_dir):
    """A run whose TAD and TSD share rows fills one cache; a run on another slice, or with another teacher,
    sharing the cache folder fills its own (the old one spoiled with NaNs: read, it would give NaN losses)."""
    from compressor.distill import run
    from compressor.recipe.schema import load_recipe

    shared = tmp_path / "teacher_outputs"

    def recipe(teacher, samples, name):
        data = tiny_recipe(teacher, finetuned=teacher, train_samples=samples)
        data["stages"] = [s for s in data["stages"] if s["name"] in ("tad", "tsd")]
        data["teacher_cache"] = {"cache_dir": str(shared)}
        folder = tmp_path / name
        folder.mkdir()
        return load_recipe(write_recipe(folder, data))

    first = run(recipe(tiny_bert_dir, 24, "first"), tmp_path / "first" / "out")
    (old,) = [p for p in shared.iterdir() if (p / COMPLETE).is_file()]
    for path in old.glob("*.npy"):
        if path.name != "offsets.npy":
            array = np.load(path, mmap_mode="r+")
            array[:] = np.nan
            array.flush()
    assert all(np.isfinite(s["train_loss"]) for s in first["stages"])
    for name, teacher, samples in (("slice", tiny_bert_dir, 16), ("teacher", deep_teacher_dir, 24)):
        report = run(recipe(teacher, samples, name), tmp_path / name / "out")
        assert all(np.isfinite(s["train_loss"]) for s in report["stages"]), name
    assert len([p for p in shared.iterdir() if (p / COMPLETE).is_file()]) == 3


def test_a_logits_only_stage_reads_the_logits_a_wider_cache_of_the_same_teacher_and_rows_keeps(
        tmp_path, tiny_bert_dir, tiny_recipe, write_recipe, deep_teacher_dir):
    """A TSD on soft and hard labels alone, after a TAD + TSD run filled the latent cache of the same teacher and
    rows: it fills no cache of its own and takes the losses it takes from its own logits-only cache; with another
    teacher it fills its own."""
    from compressor.distill import run
    from compressor.recipe.schema import load_recipe

    def recipe(name, cache_dir, stages=("tsd",), teacher=tiny_bert_dir):
        data = tiny_recipe(teacher, finetuned=teacher, train_samples=24)
        data["stages"] = [s for s in data["stages"] if s["name"] in stages]
        for s in data["stages"]:
            if s["name"] == "tsd" and stages == ("tsd",):  # logits only, two epochs (cached: rows seen twice)
                s.update(losses={"soft": 1.0, "hard": 1.0}, epochs=2)
        data["teacher_cache"] = {"cache_dir": str(cache_dir)}
        folder = tmp_path / name
        folder.mkdir()
        return load_recipe(write_recipe(folder, data)), folder / "out"

    def complete(folder):
        return sorted(p.name for p in folder.iterdir() if (p / COMPLETE).is_file())

    shared, own = tmp_path / "shared", tmp_path / "own"
    run(*recipe("latent", shared, stages=("tad", "tsd")))
    (wide,) = complete(shared)
    assert json.loads((shared / wide / COMPLETE).read_text())["spec"]["hidden_layers"]
    reused = run(*recipe("reused", shared))
    assert sorted(p.name for p in shared.iterdir()) == [wide]  # no new folder, not even a started fill
    alone = run(*recipe("alone", own))
    (narrow,) = complete(own)
    spec = json.loads((own / narrow / COMPLETE).read_text())["spec"]
    assert spec["logits"] and spec["hidden_layers"] == spec["attention_layers"] == []
    assert reused["stages"][0]["train_loss"] == pytest.approx(alone["stages"][0]["train_loss"], rel=1e-3)
    run(*recipe("other", shared, teacher=deep_teacher_dir))
    assert len(complete(shared)) == 2


@pytest.fixture(scope="module")
def deep_teacher_dir(tmp_path_factory, tiny_bert_dir):
    """Another teacher with the tiny one's tokenizer and labels (a 3-layer tiny BERT)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("other_teacher")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1}, finetuning_task="sst2")
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out

