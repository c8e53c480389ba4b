"""Checks from configs alone, before any work: a bad run fails in seconds, not after fine-tuning and GD.

Each check is a small function ``(recipe, task, models) -> None`` in :data:`CHECKS` that raises one line
naming the fix. ``models`` reads the configs (and, where needed, tokenizers) of the models a recipe names,
never their weights. Most checks are about teachers that must agree with each other or with the student:
the tokenizer comes from the fine-tuned teacher but the student's vocabulary from the first stage's teacher,
and a pretrained BERT beside a fine-tuned MPNet would distill BERT on MPNet's token ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from transformers import AutoConfig

from compressor.data.task_data import task_spec
from compressor.modeling import StudentError
from compressor.modeling.prune import Shape, arch_of, check_shape
from compressor.modeling.student import check_checkpoint, check_teacher_layers, checkpoint_tokenizer, labels_match
from compressor.recipe.schema import Recipe
from compressor.recipe.tasks import Task
from compressor.run import DistillError


@dataclass
class Models:
    """The configs and tokenizers of the recipe's models, each loaded once. A teacher fine-tuned in the run
    (``teacher.finetuned: null``) has its pretrained model's class, shape and tokenizer."""

    recipe: Recipe
    _configs: dict[str, Any] = field(default_factory=dict)
    _tokenizers: dict[str, Any] = field(default_factory=dict)

    def ref(self, kind: str) -> str:
        t = self.recipe.teacher
        return t.finetuned if kind == "finetuned" and t.finetuned else t.pretrained

    def config(self, ref: str):
        if ref not in self._configs:
            self._configs[ref] = AutoConfig.from_pretrained(ref)
        return self._configs[ref]

    def teacher(self, kind: str):
        """``pretrained`` or ``finetuned``'s config."""
        return self.config(self.ref(kind))

    def tokenizer(self, ref: str):
        """The model's tokenizer; None for a model directory without one (an encoder alone)."""
        if ref not in self._tokenizers:
            self._tokenizers[ref] = checkpoint_tokenizer(ref)
        return self._tokenizers[ref]

    def vocab(self, ref: str) -> dict[str, int] | None:
        """The tokenizer's token -> id map; None without a tokenizer."""
        found = self.tokenizer(ref)
        return None if found is None else found.get_vocab()


def uses_pretrained(recipe: Recipe) -> list[str]:
    """Where the pretrained teacher's own outputs or weights are used (not only as the start of fine-tuning)."""
    where = [f"stage {s.name!r}" for s in recipe.stages if s.teacher == "pretrained"]
    if recipe.student.init == "pruned" and recipe.student.prune_from == "pretrained":
        where.append("student.prune_from")
    return where


# --------------------------------------------------------------------------- the checks


def finetuned_labels(recipe: Recipe, task: Task, models: Models) -> None:
    if recipe.teacher.finetuned:
        found = models.teacher("finetuned")
        if not labels_match(found, task):
            got = found.num_labels if task.is_regression else list(found.id2label.values())
            want = "1 output (regression)" if task.is_regression else list(task.labels)
            raise DistillError(f"teacher.finetuned {recipe.teacher.finetuned} has labels {got} but task {task.name} "
                               f"needs {want}; give a teacher fine-tuned on this task or set teacher.finetuned: null")


def soft_labels_need_finetuned(recipe: Recipe, task: Task, models: Models) -> None:
    for stage in recipe.stages:
        if stage.teacher == "pretrained" and stage.losses.get("soft"):
            raise DistillError(f"stage {stage.name!r}: the soft-label loss needs the fine-tuned teacher's logits; "
                               f"use teacher: finetuned")


def teachers_share_a_tokenizer(recipe: Recipe, task: Task, models: Models) -> None:
    """Every model reads the fine-tuned teacher's token ids, so a pretrained teacher that is used must have the
    same vocabulary (size and tokens)."""
    users = uses_pretrained(recipe)
    if not (recipe.teacher.finetuned and users):
        return
    pre, fine = recipe.teacher.pretrained, recipe.teacher.finetuned
    pre_cfg, fine_cfg = models.config(pre), models.config(fine)
    detail = None
    if pre_cfg.vocab_size != fine_cfg.vocab_size:
        detail = f"{pre_cfg.model_type} vocabulary {pre_cfg.vocab_size} vs {fine_cfg.model_type} {fine_cfg.vocab_size}"
    else:
        pre_vocab, fine_vocab = models.vocab(pre), models.vocab(fine)
        if pre_vocab is not None and fine_vocab is not None and pre_vocab != fine_vocab:
            differ = sum(1 for token, i in fine_vocab.items() if pre_vocab.get(token) != i)
            detail = f"same size, {differ} tokens with other ids"
    if detail:
        raise DistillError(f"teacher.pretrained {pre} and teacher.finetuned {fine} have different tokenizers ({detail}): "
                           f"the tokenizer comes from teacher.finetuned, so {users[0]} would feed the pretrained teacher "
                           f"another model's token ids; use a teacher fine-tuned from teacher.pretrained, or set "
                           f"teacher.finetuned: null")


def attention_heads_divide(recipe: Recipe, task: Task, models: Models) -> None:
    s_heads = recipe.student.num_attention_heads
    for stage in recipe.stages:
        if stage.losses.get("attention"):
            t_heads = models.teacher(stage.teacher).num_attention_heads
            if max(s_heads, t_heads) % min(s_heads, t_heads):
                raise DistillError(f"stage {stage.name!r}: attention loss: student heads {s_heads} and {stage.teacher} "
                                   f"teacher heads {t_heads} must divide one another; change "
                                   f"student.num_attention_heads or drop the attention loss")


def student_fits_its_start(recipe: Recipe, task: Task, models: Models) -> None:
    """The student's initialiser can start from the teacher it is built against: the pruner supports the teacher's
    class and the cut is smaller than it; ``teacher_layers`` has its widths; a checkpoint has its vocabulary."""
    s = recipe.student
    first = models.teacher(recipe.stages[0].teacher)
    try:
        if s.init == "pruned":
            source = models.teacher(s.prune_from)
            arch_of(source)
            check_shape(Shape(s.num_hidden_layers, s.hidden_size, s.intermediate_size, s.num_attention_heads),
                        Shape.of(source))
        elif s.init == "teacher_layers":
            check_teacher_layers(s, first)
        elif s.init == "checkpoint":
            # the student is built against the first stage's teacher and reads the run's tokenizer (the
            # fine-tuned teacher's)
            own, tokenizer = models.tokenizer(s.checkpoint), models.tokenizer(models.ref("finetuned"))
            check_checkpoint(s, models.config(s.checkpoint), models.teacher("finetuned"), own, tokenizer)
            check_checkpoint(s, models.config(s.checkpoint), first, own, tokenizer)
    except StudentError as exc:
        raise DistillError(str(exc)) from None


CHECKS: tuple[Callable[[Recipe, Task, Models], None], ...] = (
    finetuned_labels, soft_labels_need_finetuned, teachers_share_a_tokenizer, attention_heads_divide,
    student_fits_its_start,
)


def preflight(recipe: Recipe) -> None:
    """Every check in :data:`CHECKS`; the first that fails raises one line."""
    task, models = task_spec(recipe.task), Models(recipe)
    for check in CHECKS:
        check(recipe, task, models)
