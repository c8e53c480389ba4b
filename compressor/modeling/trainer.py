"""Knowledge distillation on ``transformers.Trainer``: a frozen teacher, a student, weighted named losses.

The trainer knows nothing of stages: it gets a teacher, a :class:`DistillationModule` (student +
projections + the loss weights) and a dataset. Student and projections are one ``nn.Module`` so the
Trainer's optimiser, checkpoints, DDP wrapping and resume cover both, and the loss is computed inside
that module's ``forward`` so DDP sees every parameter that takes part. The teacher stays outside DDP, in
eval mode without gradients, and returns only what the weighted losses need: attention maps only of the
layers the layer map uses.

Precision: the teacher keeps fp32 weights and runs under the same autocast as the student (accelerate's,
from ``TrainingArguments.bf16``/``fp16``), so its matmuls run in half precision while softmax and LayerNorm
stay in fp32 (autocast's fp32 list on CUDA), and the latent targets keep fp32 accuracy. With mixed
precision off nothing is cast.
"""
from __future__ import annotations

import inspect
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from compressor.modeling.attention import forward_with_attentions
from compressor.modeling.losses import LossContext, Outputs, needs, uses_teacher, weighted_losses
from compressor.modeling.teacher_cache import ROW_COLUMN, TeacherCache
from compressor.recipe.schema import Recipe, Schedule

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class DistillationCallback(TrainerCallback):
    """A ``TrainerCallback`` that also hears each distillation step: which teacher produced the targets,
    the batch the student trained on, and the loss terms. For monitoring and provenance checks."""

    def on_distill_step(self, args, state, control, *, teacher: nn.Module, inputs: dict[str, torch.Tensor],
                        losses: dict[str, torch.Tensor]) -> None:
        pass


class DistillationModule(nn.Module):
    """Student + projections + this stage's loss weights; ``forward`` returns the named loss terms and ``loss``."""

    def __init__(self, student: nn.Module, projections: nn.ModuleDict, weights: dict[str, float],
                 layer_map: list[int], temperature: float = 1.0):
        super().__init__()
        self.student = student
        self.projections = projections
        self.weights = {k: float(w) for k, w in weights.items() if w}
        self.layer_map = layer_map
        self.temperature = temperature
        self.needs = needs(self.weights)
        self.uses_teacher = uses_teacher(self.weights)
        self.regression = student.config.num_labels == 1
        # a student cut from an MPNet teacher is an MPNet: no token_type_ids
        self.takes_token_types = "token_type_ids" in inspect.signature(student.forward).parameters

    def forward(self, teacher: Outputs, input_ids, attention_mask, token_type_ids=None, labels=None):
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                      output_hidden_states="hidden_states" in self.needs)
        if self.takes_token_types:
            kwargs["token_type_ids"] = token_type_ids
        if "attentions" in self.needs:  # every student layer is mapped; SDPA models return no maps otherwise (5.x)
            out = forward_with_attentions(self.student, range(1, len(self.layer_map) + 1), **kwargs)
        else:
            out = self.student(**kwargs)
        ctx = LossContext(self.layer_map, self.projections, attention_mask, labels, self.temperature, self.regression)
        return weighted_losses(self.weights, Outputs.of(out), teacher, ctx)


@torch.no_grad()
def teacher_forward(teacher: nn.Module, inputs: dict[str, torch.Tensor], wanted: frozenset[str],
                    layers: list[int]) -> Outputs:
    """The frozen teacher on a batch: hidden states when ``wanted``, attention maps of ``layers`` only (1-based)
    when ``wanted``, the logits when it has a head. Inputs it does not take (MPNet: token types) are left out."""
    accepted = inspect.signature(teacher.forward).parameters
    kwargs = {k: inputs[k] for k in MODEL_INPUTS if k in inputs and k in accepted}
    kwargs["output_hidden_states"] = "hidden_states" in wanted
    if "attentions" not in wanted:
        return Outputs.of(teacher(**kwargs))
    return Outputs.of(forward_with_attentions(teacher, layers, **kwargs))


class DistillationTrainer(Trainer):
    """``Trainer`` whose loss is the weighted distillation objective of a :class:`DistillationModule`."""

    def __init__(self, *args, teacher: nn.Module, teacher_cache: TeacherCache | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.teacher_cache = teacher_cache
        self._sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._counts: dict[str, int] = defaultdict(int)

    @torch.no_grad()
    def teacher_outputs(self, inputs: dict[str, torch.Tensor], wanted: frozenset[str],
                        layers: list[int] | None = None) -> Outputs:
        """The teacher's outputs under the student's autocast; attention maps only for ``layers`` (1-based;
        default: the layer map of the module being trained), ``None`` for the other layers."""
        if layers is None:
            layers = self.accelerator.unwrap_model(self.model).layer_map
        with self.accelerator.autocast():
            return teacher_forward(self.teacher, inputs, wanted, layers)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        module = self.accelerator.unwrap_model(model)
        if not module.uses_teacher:
            teacher = Outputs()
        elif self.teacher_cache is not None:  # computed once, before training (compressor/modeling/teacher_cache.py)
            teacher = self.teacher_cache.outputs(inputs[ROW_COLUMN], inputs["input_ids"].shape[1], self.args.device)
        else:
            teacher = self.teacher_outputs(inputs, module.needs, module.layer_map)
        losses = model(teacher=teacher, **{k: v for k, v in inputs.items() if k in (*MODEL_INPUTS, "labels")})
        for name, value in losses.items():
            self._sums[name] += value.detach()
            self._counts[name] += 1
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, DistillationCallback):
                cb.on_distill_step(self.args, self.state, self.control, teacher=self.teacher, inputs=inputs, losses=losses)
        return (losses["loss"], losses) if return_outputs else losses["loss"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds each loss term's mean since the last log as ``loss/<name>`` (TensorBoard groups them)."""
        if "loss" in logs:
            for name, total in self._sums.items():
                if name != "loss" and self._counts[name]:
                    logs[f"loss/{name}"] = round(float(total) / self._counts[name], 6)
            self._sums.clear()
            self._counts.clear()
        super().log(logs, start_time)


def process_state() -> PartialState:
    """This process's place in a ``torchrun`` job (or a single process); CPU-only machines need accelerate's
    ``cpu=True`` to form a gloo process group."""
    return PartialState(cpu=not torch.cuda.is_available())


def gpu_precision() -> str | None:
    """The half precision this machine's GPU trains in: ``bf16`` where it has it (Ampere and later), else
    ``fp16``; ``None`` without a CUDA GPU."""
    if not torch.cuda.is_available():
        return None
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def mixed_precision(fp16: bool | None) -> dict[str, bool]:
    """The recipe's ``fp16`` (``None``: on with a GPU) as TrainingArguments flags, chosen in this one place for
    teacher fine-tuning and every stage: the GPU's half precision (:func:`gpu_precision`), fp32 on the CPU."""
    kind = gpu_precision()
    on = kind is not None and fp16 is not False
    return {"bf16": on and kind == "bf16", "fp16": on and kind == "fp16"}


def warmup_arguments(ratio: float) -> dict[str, float]:
    """A warm-up fraction as TrainingArguments keywords: ``warmup_ratio`` up to transformers 4.x; 5.x dropped it
    and reads a ``warmup_steps`` below 1 as the fraction."""
    if "warmup_ratio" in TrainingArguments.__dataclass_fields__:
        return {"warmup_ratio": ratio}
    return {"warmup_steps": ratio}


def logging_dir_arguments(path: str | Path) -> dict[str, str]:
    """TensorBoard's folder as TrainingArguments keywords: ``logging_dir`` up to transformers 4.x; 5.x reads it
    from the environment."""
    if "logging_dir" in TrainingArguments.__dataclass_fields__:
        return {"logging_dir": str(path)}
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    return {}


def training_arguments(output_dir: str | Path, schedule: Schedule, recipe: Recipe, **overrides: Any) -> TrainingArguments:
    """The one ``TrainingArguments`` builder, for teacher fine-tuning and every stage: ``schedule`` (warm-up then
    linear decay), the recipe's precision, seed, checkpoint and logging steps, TensorBoard logs in
    ``output_dir/logs`` unless ``logging_dir`` says otherwise; ``overrides`` win over all of it."""
    cuda = torch.cuda.is_available()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=schedule.epochs, max_steps=schedule.max_steps,
        learning_rate=schedule.learning_rate, per_device_train_batch_size=schedule.batch_size,
        **warmup_arguments(schedule.warmup_ratio), weight_decay=schedule.weight_decay, lr_scheduler_type="linear",
        eval_strategy="no", save_strategy="steps", save_steps=recipe.save_steps, save_total_limit=1,
        logging_steps=recipe.logging_steps, report_to=["tensorboard"],
        seed=recipe.seed, remove_unused_columns=False, dataloader_num_workers=0,
        group_by_length=schedule.groups_by_length(),
        ddp_find_unused_parameters=True, save_safetensors=True, dataloader_pin_memory=cuda,
        use_cpu=not cuda,  # on a CPU-only machine torchrun then forms a gloo group
        **mixed_precision(recipe.fp16),
    )
    kwargs.update(overrides)
    # after the overrides: a caller's logging_dir must take the transformers-5 route (the environment) too
    kwargs.update(logging_dir_arguments(kwargs.pop("logging_dir", Path(output_dir) / "logs")))
    if "save_safetensors" not in TrainingArguments.__dataclass_fields__:  # transformers 5 always saves safetensors
        kwargs.pop("save_safetensors")
    return TrainingArguments(**kwargs)
