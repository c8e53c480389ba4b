"""The distillation Trainer on a small in-memory dataset: what it trains, freezes, logs and asks the teacher for."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from compressor.modeling.attention import forward_with_attentions
from compressor.modeling.losses import Outputs, needs
from compressor.modeling.student import build_student, layer_map, make_projections
from compressor.modeling.trainer import (
    DistillationCallback,
    DistillationModule,
    DistillationTrainer,
    training_arguments,
)
from compressor.recipe.schema import Recipe, StageConfig, StudentConfig
from compressor.recipe.tasks import GLUE_TASKS

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
    trainer = DistillationTrainer(model=module, teacher=teacher, args=training_arguments(tmp_path, stage, Recipe(logging_steps=1)),
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
                                  args=training_arguments(tmp_path, stage, Recipe()), train_dataset=data,
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
        t = forward_with_attentions(teacher, module.layer_map, **batch, output_hidden_states=True)
    out = module(teacher=Outputs.of(t), **batch)
    assert set(out) == {"hidden", "attention", "loss"}
    assert out["loss"].item() == pytest.approx(out["hidden"].item() + 2 * out["attention"].item(), rel=1e-5)


def test_a_gold_label_only_stage_never_runs_the_teacher(tmp_path, parts):
    tokenizer, teacher, data = parts
    calls = []
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    try:
        stage = StageConfig(name="direct", losses={"hard": 1.0}, epochs=1, batch_size=4)
        trainer = DistillationTrainer(model=_module(teacher, stage.losses), teacher=teacher,
                                      args=training_arguments(tmp_path, stage, Recipe()), train_dataset=data,
                                      data_collator=DataCollatorWithPadding(tokenizer))
        trainer.train()
        assert trainer.state.global_step == 2 and calls == []
        trainer.teacher_outputs(DataCollatorWithPadding(tokenizer)([data[0]]), needs({"soft": 1.0}))
        assert calls == [1]  # the hook itself works
    finally:
        hook.remove()


# --------------------------------------------------------------------------- teacher precision and attention maps


def _one_step_trainer(tmp_path, teacher, data, tokenizer, losses, recipe: Recipe | None = None, **overrides):
    stage = StageConfig(name="x", losses=losses, max_steps=1, batch_size=4)
    return DistillationTrainer(model=_module(teacher, losses), teacher=teacher,
                               args=training_arguments(tmp_path, stage, recipe or Recipe(), **overrides),
                               train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))


@pytest.fixture
def reset_mixed_precision(monkeypatch):
    """TrainingArguments records mixed precision in ``ACCELERATE_MIXED_PRECISION`` and accelerate in a process-wide
    singleton, and later arguments inherit both: undo them after a test that turns mixed precision on."""
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    yield
    AcceleratorState._reset_state()


@pytest.mark.parametrize("precision", ["bf16", "bf16 as on cuda", None])
def test_teacher_keeps_fp32_weights_and_runs_under_the_students_autocast(tmp_path, parts, precision,
                                                                         reset_mixed_precision):
    """Mixed precision on: the teacher's matmuls run under the same autocast as the student's (so on CUDA its
    softmax and LayerNorm run in fp32, autocast's fp32 list); off: no autocast. Its weights are never cast.

    On CPU the Trainer wraps the whole loss in its own CPU autocast; on CUDA it adds none and only accelerate's
    wrap of the student's ``forward`` applies. "bf16 as on cuda" switches the Trainer's CPU autocast off to
    reproduce that structure here."""
    tokenizer, teacher, data = parts
    teacher = copy.deepcopy(teacher)
    seen: dict[str, list] = {"teacher": [], "student": []}

    def record(who):
        return lambda mod, args, out: seen[who].append((torch.is_autocast_enabled("cpu"), out.dtype))

    trainer = _one_step_trainer(tmp_path, teacher, data, tokenizer, {"hidden": 1.0, "attention": 1.0},
                                use_cpu=True, bf16=precision is not None)
    if precision == "bf16 as on cuda":
        trainer.use_cpu_amp = False
    hooks = [teacher.bert.encoder.layer[0].intermediate.dense.register_forward_hook(record("teacher")),
             trainer.model.student.bert.encoder.layer[0].intermediate.dense.register_forward_hook(record("student"))]
    try:
        trainer.train()
    finally:
        for h in hooks:
            h.remove()
    expected = (True, torch.bfloat16) if precision else (False, torch.float32)
    assert seen["student"][0] == expected
    assert seen["teacher"] == [expected]
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_teachers_softmax_and_layernorm_run_in_fp32(tmp_path, parts):
    tokenizer, teacher, data = parts
    teacher = copy.deepcopy(teacher)
    trainer = _one_step_trainer(tmp_path, teacher, data, tokenizer, {"hidden": 1.0, "attention": 1.0},
                                recipe=Recipe(fp16=True))  # the GPU's half precision: bf16 where it has it
    norms = []
    hook = teacher.bert.encoder.layer[0].output.LayerNorm.register_forward_hook(lambda m, a, out: norms.append(out.dtype))
    try:
        batch = {k: v.to(trainer.args.device) for k, v in DataCollatorWithPadding(tokenizer)([data[i] for i in range(3)]).items()}
        out = trainer.teacher_outputs(batch, needs({"hidden": 1.0, "attention": 1.0}))
    finally:
        hook.remove()
    assert norms == [torch.float32]
    assert out.hidden_states[-1].dtype == torch.float32 and out.attentions[-1].dtype == torch.float32
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}


@pytest.fixture(scope="module")
def deep_teacher_dir(tmp_path_factory, tiny_bert_dir):
    """A 6-layer tiny BERT (SDPA by default), so that a 2-layer student maps to layers 3 and 6 only."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("deep_teacher")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
                        intermediate_size=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(out)
    return out


def test_teacher_computes_attention_maps_only_for_mapped_layers_and_they_equal_eager(tmp_path, parts, deep_teacher_dir,
                                                                                       monkeypatch):
    tokenizer, _, data = parts
    teacher = AutoModelForSequenceClassification.from_pretrained(deep_teacher_dir)
    eager = AutoModelForSequenceClassification.from_pretrained(deep_teacher_dir, attn_implementation="eager").eval()
    losses = {"hidden": 1.0, "attention": 1.0}
    trainer = _one_step_trainer(tmp_path, teacher, data, tokenizer, losses)
    assert trainer.model.layer_map == [3, 6]
    batch = DataCollatorWithPadding(tokenizer)([data[i] for i in range(4)])  # rows of different lengths: padding
    assert (batch["attention_mask"] == 0).any()

    sdpa_calls = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: sdpa_calls.append(1) or real_sdpa(*a, **k))
    out = trainer.teacher_outputs(batch, needs(losses))
    monkeypatch.undo()
    with torch.no_grad():
        ref = eager(**batch, output_hidden_states=True, output_attentions=True)

    assert len(out.attentions) == 6
    assert [i for i, a in enumerate(out.attentions, start=1) if a is not None] == [3, 6]
    for layer in (3, 6):
        torch.testing.assert_close(out.attentions[layer - 1], ref.attentions[layer - 1], rtol=0, atol=1e-6)
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    assert len(sdpa_calls) == 4  # the four unmapped layers kept the fused kernel


def test_group_by_length_groups_the_batches_the_distillation_trainer_draws(tmp_path, parts):
    """``group_by_length: true`` on a task stage: the DistillationTrainer's own train dataloader holds the same
    rows as without it, in batches of similar length, so far fewer padded tokens."""
    tokenizer, teacher, _ = parts
    lengths = torch.randint(3, 60, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    ids = [[tokenizer.cls_token_id] + [tokenizer.unk_token_id] * (n - 2) + [tokenizer.sep_token_id] for n in lengths]
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * n for n in lengths],
                              "labels": [i % 2 for i in range(256)]})

    def drawn(group: bool) -> tuple[list[int], int]:
        stage = StageConfig(name="tad", losses={"hard": 1.0}, group_by_length=group, batch_size=32)
        trainer = DistillationTrainer(model=_module(teacher, stage.losses), teacher=teacher,
                                      args=training_arguments(tmp_path / str(group), stage, Recipe()),
                                      train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer))
        batches = list(trainer.get_train_dataloader())
        rows = sorted(int(mask.sum()) for batch in batches for mask in batch["attention_mask"])
        return rows, sum(batch["input_ids"].numel() for batch in batches)

    grouped_rows, grouped_tokens = drawn(True)
    plain_rows, plain_tokens = drawn(False)
    assert grouped_rows == plain_rows == sorted(lengths)
    assert grouped_tokens < 0.8 * plain_tokens


def test_a_callers_logging_dir_takes_the_transformers_5_route(tmp_path, monkeypatch):
    """transformers 5 has no ``TrainingArguments.logging_dir`` (TensorBoard reads TENSORBOARD_LOGGING_DIR): a stage's
    own log folder, passed as an override, goes to the environment and never reaches TrainingArguments."""
    from transformers import TrainingArguments

    from compressor.modeling import trainer

    class Transformers5Arguments:
        __dataclass_fields__ = {k: v for k, v in TrainingArguments.__dataclass_fields__.items()
                                if k not in ("logging_dir", "save_safetensors")}

        def __init__(self, **kwargs):
            unknown = set(kwargs) - set(self.__dataclass_fields__)
            assert not unknown, f"not TrainingArguments fields in transformers 5: {unknown}"
            self.kwargs = kwargs

    monkeypatch.setattr(trainer, "TrainingArguments", Transformers5Arguments)
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    trainer.training_arguments(tmp_path / "ckpt", StageConfig(name="tad"), Recipe(), logging_dir=str(tmp_path / "logs"))
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "logs")
    trainer.training_arguments(tmp_path / "ckpt", StageConfig(name="tad"), Recipe())
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "ckpt" / "logs")


def test_on_a_bf16_gpu_fine_tuning_and_every_stage_choose_bf16_through_the_one_builder(
        tmp_path, tiny_encoder_dir, tiny_recipe, write_recipe, monkeypatch):
    """A whole run (teacher fine-tuned here, then four stages) on a machine that reports a bf16-capable GPU: every
    TrainingArguments is built by ``training_arguments`` and asks for bf16 alone, never fp16 beside it. The
    arguments are then built for this CPU, so the run itself goes ahead."""
    from transformers import TrainingArguments

    from compressor.distill import run
    from compressor.modeling import trainer
    from compressor.recipe.schema import load_recipe

    asked = []

    def on_this_cpu(**kwargs):
        asked.append((Path(kwargs["output_dir"]).parent.name, kwargs["bf16"], kwargs["fp16"]))
        return TrainingArguments(**{**kwargs, "bf16": False, "fp16": False})

    on_this_cpu.__dataclass_fields__ = TrainingArguments.__dataclass_fields__
    monkeypatch.setattr(trainer, "gpu_precision", lambda: "bf16")
    monkeypatch.setattr(trainer, "TrainingArguments", on_this_cpu)
    recipe = load_recipe(write_recipe(tmp_path, tiny_recipe(tiny_encoder_dir, general_steps=1, train_samples=16)))
    run(recipe, tmp_path / "run")
    assert asked == [(name, True, False) for name in ("teacher", "gd", "ged", "tad", "tsd")]
    monkeypatch.setattr(trainer, "gpu_precision", lambda: "fp16")  # an older GPU: fp16 alone
    assert trainer.mixed_precision(None) == {"bf16": False, "fp16": True}
    assert trainer.mixed_precision(False) == {"bf16": False, "fp16": False}
