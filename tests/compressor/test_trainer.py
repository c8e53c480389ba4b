"""The distillation Trainer on a small in-memory dataset: what it trains, freezes, logs and asks the teacher for."""
from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from compressor.config import Recipe, StageConfig, StudentConfig
from compressor.losses import Outputs, needs
from compressor.student import build_student, layer_map, make_projections
from compressor.tasks import GLUE_TASKS
from compressor.trainer import DistillationCallback, DistillationModule, DistillationTrainer, distill_arguments

SENTENCES = ["a gripping, funny film", "dull and far too long", "the cast is wonderful", "i want my money back",
             "quietly moving", "a mess from start to finish", "charming and sharp", "flat, lifeless acting"]


@pytest.fixture(scope="module")
def parts(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir)
    enc = tokenizer(SENTENCES, truncation=True, max_length=16)
    data = Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(SENTENCES))]})
    return tokenizer, teacher, data


def _module(teacher, losses, hidden=24):
    torch.manual_seed(0)
    student = build_student(StudentConfig(num_hidden_layers=2, hidden_size=hidden, intermediate_size=48,
                                          num_attention_heads=4), teacher, GLUE_TASKS["sst2"])
    return DistillationModule(student, make_projections(hidden, teacher.config.hidden_size), losses,
                              layer_map(2, teacher.config.num_hidden_layers), temperature=2.0)


class Recorder(DistillationCallback):
    def __init__(self):
        self.steps = []

    def on_distill_step(self, args, state, control, *, teacher, inputs, losses):
        self.steps.append((teacher, sorted(k for k in losses if k != "loss"), inputs["input_ids"].shape))


def test_trainer_trains_student_and_projections_not_teacher_and_logs_each_loss(tmp_path, parts):
    tokenizer, teacher, data = parts
    losses = {"hidden": 1.0, "attention": 1.0, "embedding": 1.0, "soft": 1.0, "hard": 1.0}
    module = _module(teacher, losses)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    stage = StageConfig(name="any", losses=losses, epochs=2, batch_size=4, learning_rate=1e-2)
    recorder = Recorder()
    trainer = DistillationTrainer(model=module, teacher=teacher, args=distill_arguments(tmp_path, stage, Recipe(logging_steps=1)),
                                  train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer), callbacks=[recorder])
    trainer.train()

    assert trainer.state.global_step == 4  # 8 rows / batch 4 * 2 epochs
    after = module.state_dict()
    assert not torch.equal(after["projections.hidden.weight"], before["projections.hidden.weight"])
    assert not torch.equal(after["student.classifier.weight"], before["student.classifier.weight"])
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 4
    assert {f"loss/{k}" for k in losses} <= set(logged[0])
    assert [r[0] for r in recorder.steps] == [teacher] * 4
    assert recorder.steps[0][1] == sorted(losses)


def test_teacher_returns_only_what_the_losses_need(tmp_path, parts):
    tokenizer, teacher, data = parts
    batch = DataCollatorWithPadding(tokenizer)([data[i] for i in range(3)])
    stage = StageConfig(name="x", losses={"soft": 1.0, "hard": 1.0})
    trainer = DistillationTrainer(model=_module(teacher, stage.losses), teacher=teacher,
                                  args=distill_arguments(tmp_path, stage, Recipe()), train_dataset=data,
                                  data_collator=DataCollatorWithPadding(tokenizer))
    logits_only = trainer.teacher_outputs(batch, needs(stage.losses))
    assert logits_only.hidden_states is None and logits_only.attentions is None
    assert logits_only.logits.shape == (3, 2)
    latent = trainer.teacher_outputs(batch, needs({"hidden": 1.0, "attention": 1.0}))
    assert len(latent.hidden_states) == 3 and len(latent.attentions) == 2
    assert latent.attentions[0].shape[:2] == (3, 4)
    # post-softmax maps: each row sums to 1
    assert torch.allclose(latent.attentions[0].sum(-1), torch.ones(3, 4, batch["input_ids"].shape[1]), atol=1e-5)


def test_latent_only_module_runs_without_labels(parts):
    tokenizer, teacher, data = parts
    module = _module(teacher, {"hidden": 1.0, "attention": 2.0})
    batch = DataCollatorWithPadding(tokenizer)([{k: v for k, v in data[i].items() if k != "labels"} for i in range(2)])
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True, output_attentions=True)
    out = module(teacher=Outputs.of(t), **batch)
    assert set(out) == {"hidden", "attention", "loss"}
    assert out["loss"].item() == pytest.approx(out["hidden"].item() + 2 * out["attention"].item(), rel=1e-6)


def test_a_gold_label_only_stage_never_runs_the_teacher(tmp_path, parts):
    tokenizer, teacher, data = parts
    calls = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        stage = StageConfig(name="direct", losses={"hard": 1.0}, epochs=1, batch_size=4)
        trainer = DistillationTrainer(model=_module(teacher, stage.losses), teacher=teacher,
                                      args=distill_arguments(tmp_path, stage, Recipe()), train_dataset=data,
                                      data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        assert trainer.state.global_step == 2 and calls == []
        trainer.teacher_outputs(DataCollatorWithPadding(tokenizer)([data[0]]), needs({"soft": 1.0}))
        assert calls == [1]  # the hook itself works
    finally:
        hook.remove()
