"""Distillation losses: small pure functions (tensors in, scalar out) and a name -> term registry.

The pure functions know nothing of models. The registry's terms adapt them to what one forward pass of
a teacher and a student produced (:class:`Outputs`, TextBrewer's "adaptor" idea) plus the per-batch
:class:`LossContext` (layer map, projections, mask, labels, temperature), so the trainer only looks
names up: a recipe's ``losses: {hidden: 1.0, soft: 0.5}`` is a weighted sum of ``LOSSES[name]`` terms.

Conventions (documented because they change the scale of the recipe's weights):
- ``hidden`` and ``attention`` average over the student's layers (not a sum as in TinyBERT), so a weight
  means the same thing whatever the depth.
- Hidden-state and attention terms ignore padding positions (masked means), so dynamic padding does not
  change the loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compressor.data import NO_LABEL

LOG_EPS = 1e-12
"""Floor for student probabilities under a log (a student map can underflow to 0 where the teacher's doesn't)."""


# --------------------------------------------------------------------------- pure functions


def masked_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the real tokens: ``student``/``teacher`` (B, L, D), ``mask`` (B, L) of 0/1."""
    m = mask.float().unsqueeze(-1)
    sq = (student.float() - teacher.float()) ** 2 * m
    return sq.sum() / (m.sum() * student.shape[-1]).clamp_min(1.0)


def merge_heads(probs: Tensor, heads: int) -> Tensor:
    """Average groups of heads down to ``heads`` maps; an average of distributions is still a distribution."""
    b, h, lq, lk = probs.shape
    if h == heads:
        return probs
    if h % heads:
        raise ValueError(f"cannot compare attention maps with {h} and {heads} heads; use head counts where one divides the other")
    return probs.view(b, heads, h // heads, lq, lk).mean(2)


def attention_kl(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """KL(teacher || student) between attention probability maps (B, H, L, L), averaged over heads and real queries.

    Padded keys carry (near) zero probability in both maps; padded query rows are excluded by ``mask``
    (B, L). Different head counts are averaged to the smaller count (see :func:`merge_heads`).
    """
    heads = min(student.shape[1], teacher.shape[1])
    s, t = merge_heads(student.float(), heads), merge_heads(teacher.float(), heads)
    keys = mask[:, None, None, :].to(s.dtype)
    per_row = (torch.xlogy(t, t) - t * s.clamp_min(LOG_EPS).log()) * keys
    per_row = per_row.sum(-1)  # (B, H, Lq)
    queries = mask[:, None, :].to(s.dtype).expand_as(per_row)
    return (per_row * queries).sum() / queries.sum().clamp_min(1.0)


def soft_label_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) per example, averaged, times T^2 (Hinton et al.) so gradients keep their scale."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def regression_mse(student: Tensor, target: Tensor) -> Tensor:
    """MSE between a regression head's outputs (B, 1) or (B,) and targets of the same length; NaN targets
    (rows without a gold value, e.g. augmented ones) are left out, and a batch with none gives 0."""
    s, t = student.float().reshape(-1), target.float().reshape(-1)
    known = ~torch.isnan(t)
    return ((s - t.nan_to_num()) ** 2 * known).sum() / known.sum().clamp_min(1)



def hard_label_ce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the rows that have a gold label (label != NO_LABEL); 0 for a batch with none."""
    labels = labels.long()
    total = F.cross_entropy(student_logits.float(), labels, ignore_index=NO_LABEL, reduction="sum")
    return total / (labels != NO_LABEL).sum().clamp_min(1)


# --------------------------------------------------------------------------- adaptors + registry


@dataclass
class Outputs:
    """What a loss may need from one forward pass; ``None`` where the stage did not ask for it."""

    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    """``hidden_states[0]`` is the embedding output, ``hidden_states[i]`` layer i's output."""
    attentions: tuple[Tensor, ...] | None = None
    """``attentions[i - 1]`` is layer i's post-softmax attention map (B, H, L, L)."""

    @classmethod
    def of(cls, model_output) -> "Outputs":
        return cls(getattr(model_output, "logits", None), getattr(model_output, "hidden_states", None),
                   getattr(model_output, "attentions", None))


@dataclass
class LossContext:
    """Everything besides the two models' outputs that a term needs for one batch."""

    layer_map: list[int]
    """Teacher layer (1-based) for student layers 1..M."""
    projections: nn.ModuleDict
    """``"hidden"`` and ``"embedding"``: student width -> teacher width (Identity when equal)."""
    attention_mask: Tensor
    labels: Tensor | None = None
    temperature: float = 1.0
    regression: bool = False


@dataclass(frozen=True)
class LossTerm:
    fn: Callable[[Outputs, Outputs, LossContext], Tensor]
    needs: frozenset[str]
    """Which of ``hidden_states`` / ``attentions`` / ``logits`` both models must return."""
    uses_teacher: bool = True
    """False for the gold-label term: a stage with only such terms never runs the teacher."""


def _hidden(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    proj = ctx.projections["hidden"]
    terms = [masked_mse(proj(s.hidden_states[i]), t.hidden_states[j].float(), ctx.attention_mask)
             for i, j in enumerate(ctx.layer_map, start=1)]
    return torch.stack(terms).mean()


def _attention(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    terms = [attention_kl(s.attentions[i - 1], t.attentions[j - 1], ctx.attention_mask)
             for i, j in enumerate(ctx.layer_map, start=1)]
    return torch.stack(terms).mean()


def _embedding(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    return masked_mse(ctx.projections["embedding"](s.hidden_states[0]), t.hidden_states[0].float(), ctx.attention_mask)


def _soft(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    if ctx.regression:
        return F.mse_loss(s.logits.float().reshape(-1), t.logits.float().reshape(-1))
    return soft_label_kl(s.logits, t.logits, ctx.temperature)


def _hard(s: Outputs, t: Outputs, ctx: LossContext) -> Tensor:
    if ctx.labels is None:
        raise ValueError("the hard-label loss needs labelled task data (data: task)")
    return regression_mse(s.logits, ctx.labels) if ctx.regression else hard_label_ce(s.logits, ctx.labels)


LOSSES: dict[str, LossTerm] = {
    "hidden": LossTerm(_hidden, frozenset({"hidden_states"})),
    "attention": LossTerm(_attention, frozenset({"attentions"})),
    "embedding": LossTerm(_embedding, frozenset({"hidden_states"})),
    "soft": LossTerm(_soft, frozenset({"logits"})),
    "hard": LossTerm(_hard, frozenset({"logits"}), uses_teacher=False),
}


def needs(weights: dict[str, float]) -> frozenset[str]:
    """The outputs the models must return for these weighted losses (zero weights need nothing)."""
    return frozenset().union(*(LOSSES[name].needs for name, w in weights.items() if w))


def uses_teacher(weights: dict[str, float]) -> bool:
    return any(LOSSES[name].uses_teacher for name, w in weights.items() if w)


def weighted_losses(weights: dict[str, float], student: Outputs, teacher: Outputs,
                    ctx: LossContext) -> dict[str, Tensor]:
    """Each non-zero-weighted term by name, plus ``"loss"``: their weighted sum."""
    parts = {name: LOSSES[name].fn(student, teacher, ctx) for name, w in weights.items() if w}
    parts["loss"] = sum(weights[name] * value for name, value in parts.items())
    return parts
