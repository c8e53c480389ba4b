"""The student: a standard ``BertForSequenceClassification`` of ERNIE-Tiny's shape, plus its projections.

The student shares the teacher's tokenizer and vocabulary (so the teacher's targets line up token for
token) and carries the task's ``id2label``, so any stage's output is a normal HF classifier.

Initialisers (``student.init``): ``random`` (the paper), ``teacher_layers`` (embeddings and a uniform
subset of the teacher's layers; widths must match), ``checkpoint`` (a student directory, e.g. a published
general-distilled one; its head is re-initialised when its labels differ from the task's).

Projections: one ``nn.Linear`` (student width -> teacher width) per latent term, ``hidden`` and
``embedding``, rather than TinyBERT's single shared matrix: embedding outputs and layer outputs live on
different scales, and a second 312x384 matrix costs nothing. When widths match they are ``Identity``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from compressor.config import StudentConfig
from compressor.finetune import label_maps
from compressor.tasks import Task

PROJECTIONS_FILE = "projections.pt"
PROJECTION_KINDS = ("hidden", "embedding")


class StudentError(ValueError):
    """A student that cannot be built as asked; one line naming the fix."""


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer (1-based) for student layers 1..M: ``ceil(i * N / M)``, uniform and ending on the last layer.

    12 -> 4 gives [3, 6, 9, 12]; 6 -> 4 gives [2, 3, 5, 6]; a deeper student than teacher reuses layers.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise StudentError(f"layer counts must be positive, got student {student_layers} and teacher {teacher_layers}")
    return [math.ceil(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)]


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


def _init_teacher_layers(cfg: StudentConfig, teacher, task: Task) -> BertForSequenceClassification:
    tc = teacher.config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
        if getattr(cfg, key) != getattr(tc, key):
            raise StudentError(f"student.init teacher_layers needs the teacher's widths: student.{key} is "
                               f"{getattr(cfg, key)} but the teacher's is {getattr(tc, key)}; use init: random")
    if cfg.num_hidden_layers > tc.num_hidden_layers:
        raise StudentError(f"student.num_hidden_layers {cfg.num_hidden_layers} exceeds the teacher's {tc.num_hidden_layers}")
    student = _init_random(cfg, teacher, task)
    src, dst = teacher.base_model, student.bert
    dst.embeddings.load_state_dict(src.embeddings.state_dict())
    for i, j in enumerate(layer_map(cfg.num_hidden_layers, tc.num_hidden_layers)):
        dst.encoder.layer[i].load_state_dict(src.encoder.layer[j - 1].state_dict())
    if getattr(src, "pooler", None) is not None:
        dst.pooler.load_state_dict(src.pooler.state_dict())
    return student


def _init_checkpoint(cfg: StudentConfig, teacher, task: Task) -> BertForSequenceClassification:
    found = AutoConfig.from_pretrained(cfg.checkpoint)
    if found.vocab_size != teacher.config.vocab_size:
        raise StudentError(f"student.checkpoint {cfg.checkpoint} has vocabulary {found.vocab_size} but the teacher's "
                           f"is {teacher.config.vocab_size}; the student must share the teacher's tokenizer")
    if labels_match(found, task) and "ForSequenceClassification" in "".join(found.architectures or []):
        return AutoModelForSequenceClassification.from_pretrained(cfg.checkpoint)
    student = AutoModelForSequenceClassification.from_pretrained(cfg.checkpoint, ignore_mismatched_sizes=True,
                                                                 **label_maps(task))
    student._init_weights(student.classifier)
    return student


INITIALISERS = {"random": _init_random, "teacher_layers": _init_teacher_layers, "checkpoint": _init_checkpoint}


def build_student(cfg: StudentConfig, teacher, task: Task) -> BertForSequenceClassification:
    """A fresh student for the first stage; ``teacher`` supplies vocabulary size (and layers for ``teacher_layers``)."""
    if cfg.init not in INITIALISERS:
        raise StudentError(f"student.init must be one of {', '.join(INITIALISERS)}, got {cfg.init!r}")
    return INITIALISERS[cfg.init](cfg, teacher, task)


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
