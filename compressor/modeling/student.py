"""The student: a standard ``BertForSequenceClassification`` of ERNIE-Tiny's shape, plus its projections.

The student shares the teacher's tokenizer and vocabulary (so the teacher's targets line up token for
token) and carries the task's ``id2label``, so any stage's output is a normal HF classifier.

Initialisers (``student.init``): ``random`` (the paper), ``teacher_layers`` (embeddings and a uniform
subset of the teacher's layers; widths must match), ``checkpoint`` (a student directory, e.g. a published
general-distilled one; its head is re-initialised when its labels differ from the task's, and its word embeddings
are re-indexed by token string when it was made for another tokenizer, :mod:`compressor.modeling.vocab`), ``pruned`` (cut
out of a teacher by measured importance, :func:`prune_student`; the teacher's own model class, which then
starts the first stage like a checkpoint). A pruned student records the teacher layers it kept in its config
(``pruned_from``), so the latent losses map each student layer to the teacher layer it came from.

Projections: one ``nn.Linear`` (student width -> teacher width) per latent term, ``hidden`` and
``embedding``, rather than TinyBERT's single shared matrix: embedding outputs and layer outputs live on
different scales, and a second 312x384 matrix costs nothing. When widths match they are ``Identity``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from compressor.modeling import StudentError
from compressor.modeling.vocab import needs_reindexing, reindex_embeddings
from compressor.recipe.schema import StudentConfig
from compressor.recipe.tasks import Task, label_maps

log = logging.getLogger(__name__)

PROJECTIONS_FILE = "projections.pt"
PROJECTION_KINDS = ("hidden", "embedding")


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for student layers 1..M: ``ceil(i * N / M)``, uniform and ending on the last layer.

    12 -> 4 gives [3, 6, 9, 12]; 6 -> 4 gives [2, 3, 5, 6]; a deeper student than teacher reuses layers.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise StudentError(f"layer counts must be positive, got student {student_layers} and teacher {teacher_layers}")
    return [math.ceil(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)]


def layer_map_for(student_config, teacher_config) -> list[int]:
    """The teacher layer (1-based) each student layer learns from: the layers a pruned student was cut from
    when this teacher has the depth it was cut from, else the uniform :func:`layer_map`."""
    pruned = getattr(student_config, "pruned_from", None) or {}
    layers = pruned.get("layers")
    if (layers and len(layers) == student_config.num_hidden_layers
            and pruned.get("num_hidden_layers") == teacher_config.num_hidden_layers):
        return list(layers)
    return layer_map(student_config.num_hidden_layers, teacher_config.num_hidden_layers)


def labels_match(config, task: Task) -> bool:
    """Same number of outputs, and the same class names unless the config only has generic ``LABEL_i`` names."""
    if config.num_labels != task.num_labels:
        return False
    if task.is_regression:
        return True
    names = [config.id2label[i] for i in range(config.num_labels)]
    return names == list(task.labels) or names == [f"LABEL_{i}" for i in range(config.num_labels)]


def student_config(cfg: StudentConfig, teacher_config, task: Task) -> BertConfig:
    """ERNIE-Tiny's shape from the recipe; vocabulary, positions and token types from the teacher.

    Attention dropout is 0: HF returns attention maps *after* dropout, and the attention loss compares
    those maps as distributions.
    """
    return BertConfig(
        vocab_size=teacher_config.vocab_size,
        max_position_embeddings=teacher_config.max_position_embeddings,
        type_vocab_size=getattr(teacher_config, "type_vocab_size", 2),  # MPNet has none
        pad_token_id=getattr(teacher_config, "pad_token_id", 0) or 0,
        num_hidden_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_attention_heads=cfg.num_attention_heads,
        attention_probs_dropout_prob=0.0, **label_maps(task),
    )


def _init_random(cfg: StudentConfig, teacher, task: Task) -> BertForSequenceClassification:
    return BertForSequenceClassification(student_config(cfg, teacher.config, task))


def check_teacher_layers(cfg: StudentConfig, teacher_config) -> None:
    """``init: teacher_layers`` copies whole layers: the student needs the teacher's widths and at most its depth."""
    tc = teacher_config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
        if getattr(cfg, key) != getattr(tc, key):
            raise StudentError(f"student.init teacher_layers needs the teacher's widths: student.{key} is "
                               f"{getattr(cfg, key)} but the teacher's is {getattr(tc, key)}; use init: random")
    if cfg.num_hidden_layers > tc.num_hidden_layers:
        raise StudentError(f"student.num_hidden_layers {cfg.num_hidden_layers} exceeds the teacher's {tc.num_hidden_layers}")


def checkpoint_tokenizer(ref: str):
    """The tokenizer saved with a checkpoint; None for a model directory without one (an encoder alone)."""
    try:
        return AutoTokenizer.from_pretrained(ref)
    except (OSError, ValueError, TypeError):
        return None


def check_checkpoint(cfg: StudentConfig, checkpoint_config, teacher_config, own_tokenizer=None,
                     teacher_tokenizer=None) -> bool:
    """A checkpoint student reads the teacher's token ids. With both tokenizers at hand, a checkpoint made for
    another vocabulary is re-indexed to the teacher's (:mod:`compressor.modeling.vocab`); returns whether it must
    be. Without them the vocabulary sizes must agree."""
    name = f"student.checkpoint {cfg.checkpoint}"
    if own_tokenizer is not None and teacher_tokenizer is not None:
        return needs_reindexing(own_tokenizer, teacher_tokenizer, name)
    if checkpoint_config.vocab_size != teacher_config.vocab_size:
        raise StudentError(f"{name} has vocabulary {checkpoint_config.vocab_size} but the teacher's is "
                           f"{teacher_config.vocab_size}, and no tokenizer beside it to re-index it by; save the "
                           "checkpoint's tokenizer in its folder, or start from a student with the teacher's tokenizer")
    return False


def _init_teacher_layers(cfg: StudentConfig, teacher, task: Task) -> BertForSequenceClassification:
    tc = teacher.config
    check_teacher_layers(cfg, tc)
    student = _init_random(cfg, teacher, task)
    src, dst = teacher.base_model, student.bert
    dst.embeddings.load_state_dict(src.embeddings.state_dict())
    for i, j in enumerate(layer_map(cfg.num_hidden_layers, tc.num_hidden_layers)):
        dst.encoder.layer[i].load_state_dict(src.encoder.layer[j - 1].state_dict())
    if getattr(src, "pooler", None) is not None:
        dst.pooler.load_state_dict(src.pooler.state_dict())
    return student


def _init_checkpoint(cfg: StudentConfig, teacher, task: Task, tokenizer=None) -> BertForSequenceClassification:
    found = AutoConfig.from_pretrained(cfg.checkpoint)
    own = checkpoint_tokenizer(cfg.checkpoint) if tokenizer is not None else None
    reindex = check_checkpoint(cfg, found, teacher.config, own, tokenizer)
    if labels_match(found, task) and "ForSequenceClassification" in "".join(found.architectures or []):
        # same labels: the head is kept, the task name and input kind (single/pair) become this task's
        student = AutoModelForSequenceClassification.from_pretrained(cfg.checkpoint, **label_maps(task))
    else:
        student = AutoModelForSequenceClassification.from_pretrained(cfg.checkpoint, ignore_mismatched_sizes=True,
                                                                     **label_maps(task))
        student._init_weights(student.classifier)
    if reindex:
        counts = reindex_embeddings(student, own, tokenizer, f"student.checkpoint {cfg.checkpoint}")
        log.info("student.checkpoint %s: word embeddings re-indexed to the teacher's vocabulary (%s of %s tokens "
                 "found by string)", cfg.checkpoint, f"{counts['found']:,}", f"{counts['total']:,}")
    return student


INITIALISERS = {"random": _init_random, "teacher_layers": _init_teacher_layers, "checkpoint": _init_checkpoint}


def build_student(cfg: StudentConfig, teacher, task: Task, tokenizer=None) -> BertForSequenceClassification:
    """A fresh student for the first stage; ``teacher`` supplies vocabulary size (and layers for ``teacher_layers``),
    ``tokenizer`` (the teacher's) the vocabulary a checkpoint made for another one is re-indexed to.

    ``init: pruned`` students are made by :func:`prune_student` before the first stage (they need calibration
    data) and then start it as ``checkpoint`` students do.
    """
    if cfg.init not in INITIALISERS:
        raise StudentError(f"student.init must be one of {', '.join(INITIALISERS)}, got {cfg.init!r}")
    if cfg.init == "checkpoint":
        return _init_checkpoint(cfg, teacher, task, tokenizer)
    return INITIALISERS[cfg.init](cfg, teacher, task)


def prune_student(cfg: StudentConfig, teacher, task: Task, batches: list[dict[str, torch.Tensor]],
                  source: str) -> tuple[nn.Module, nn.ModuleDict, dict]:
    """Cut the recipe's student shape out of ``teacher`` (see compressor/modeling/prune.py): the student (the teacher's
    own class, with the task's labels), hidden-state projections that start as the exact inverse of the
    channel cut, and the pruning report. ``source`` names the teacher in the student's ``pruned_from``."""
    from compressor.modeling.prune import Shape, channel_selection, prune

    shape = Shape(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads)
    overrides = {"attention_probs_dropout_prob": 0.0, **label_maps(task)}
    try:
        result = prune(teacher, shape, batches, overrides, layers=cfg.prune.layers, recovery_steps=cfg.prune.recovery_steps)
    except StudentError as exc:
        raise StudentError(str(exc)) from None
    student = result.student
    student.config.pruned_from = {"source": source, "num_hidden_layers": teacher.config.num_hidden_layers,
                                  "layers": result.report["layers"], "method": result.report["layer_choice"]["method"]}
    projections = make_projections(cfg.hidden_size, teacher.config.hidden_size)
    if cfg.hidden_size != teacher.config.hidden_size:
        selection = channel_selection(result.plan, cfg.hidden_size, teacher.config.hidden_size)
        with torch.no_grad():
            for proj in projections.values():
                proj.weight.copy_(selection)
                proj.bias.zero_()
    return student, projections, result.report


def make_projections(student_width: int, teacher_width: int) -> nn.ModuleDict:
    def one() -> nn.Module:
        return nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)

    return nn.ModuleDict({kind: one() for kind in PROJECTION_KINDS})


def projections_for(student, teacher, previous: str | Path | None = None) -> nn.ModuleDict:
    """Projections for this student/teacher pair, continuing ``previous/projections.pt`` when its shapes fit.

    A later stage may use a teacher of another width (its own fine-tuned model); then fresh ones are made.
    """
    proj = make_projections(student.config.hidden_size, teacher.config.hidden_size)
    path = Path(previous) / PROJECTIONS_FILE if previous else None
    if path is not None and path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = proj.state_dict()
        if state.keys() == own.keys() and all(state[k].shape == own[k].shape for k in own):
            proj.load_state_dict(state)
    return proj
