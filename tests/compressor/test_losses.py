"""Each loss against a value worked out by hand on small explicit tensors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compressor.modeling.losses import (
    LOSSES,
    LossContext,
    Outputs,
    attention_kl,
    hard_label_ce,
    masked_mse,
    merge_heads,
    needs,
    regression_mse,
    soft_label_kl,
    weighted_losses,
)


def test_masked_mse_ignores_padding():
    student = torch.tensor([[[1.0, 2.0], [30.0, 40.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    # only token 0 is real: ((1-0)^2 + (2-0)^2) / (1 token * 2 features) = 2.5
    assert masked_mse(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(2.5)
    # both real: (1 + 4 + 900 + 1600) / 4 = 626.25
    assert masked_mse(student, teacher, torch.tensor([[1, 1]])).item() == pytest.approx(626.25)


def test_attention_kl_by_hand():
    teacher = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    student = torch.tensor([[[[0.25, 0.75], [0.5, 0.5]]]])
    row1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row2 = 1.0 * math.log(1.0 / 0.5)  # the 0 * log(0 / 0.5) term is 0
    assert attention_kl(student, teacher, torch.tensor([[1, 1]])).item() == pytest.approx((row1 + row2) / 2, rel=1e-5)


def test_attention_kl_masks_padded_queries_and_keys():
    # token 1 is padding: only query row 0 counts, and its key 1 carries no teacher probability
    teacher = torch.tensor([[[[1.0, 0.0], [0.3, 0.7]]]])
    student = torch.tensor([[[[0.8, 0.2], [0.9, 0.1]]]])
    assert attention_kl(student, teacher, torch.tensor([[1, 0]])).item() == pytest.approx(math.log(1 / 0.8), rel=1e-5)


def test_attention_kl_is_zero_for_identical_maps_and_handles_head_mismatch():
    t2 = torch.tensor([[[[0.2, 0.8], [0.6, 0.4]], [[0.4, 0.6], [0.2, 0.8]]]])  # 2 heads
    merged = torch.tensor([[[[0.3, 0.7], [0.4, 0.6]]]])  # their mean, by hand
    assert torch.allclose(merge_heads(t2, 1), merged)
    assert attention_kl(merged, t2, torch.tensor([[1, 1]])).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="heads"):
        merge_heads(torch.ones(1, 3, 2, 2) / 2, 2)


def test_soft_label_kl_by_hand():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax = [0.75, 0.25]
    t1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_label_kl(student, teacher, 1.0).item() == pytest.approx(t1, rel=1e-5)
    # T = 2: teacher logits / 2 = [ln(3)/2, 0] -> p = [sqrt3, 1] / (sqrt3 + 1); the loss is scaled by T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    t2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert soft_label_kl(student, teacher, 2.0).item() == pytest.approx(4 * t2, rel=1e-5)


def test_hard_label_and_regression_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    # -ln(0.75) for the first row, -ln(0.5) for the second, averaged
    assert hard_label_ce(logits, torch.tensor([0, 1])).item() == pytest.approx((-math.log(0.75) - math.log(0.5)) / 2)
    assert regression_mse(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0])).item() == pytest.approx(2.5)


def _ctx(**kw) -> LossContext:
    base = dict(layer_map=[2], projections=nn.ModuleDict({"hidden": nn.Identity(), "embedding": nn.Identity()}),
                attention_mask=torch.tensor([[1]]))
    return LossContext(**{**base, **kw})


def test_hidden_term_uses_the_mapped_teacher_layer_and_projection():
    # one student layer mapped to teacher layer 2; hidden_states[0] is the embedding output
    s = Outputs(hidden_states=(torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[1.0, 2.0]]])))
    t = Outputs(hidden_states=(torch.zeros(1, 1, 3), torch.tensor([[[9.0, 9.0, 9.0]]]), torch.tensor([[[1.0, 1.0, 4.0]]])))
    proj = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # [1, 2] -> [1, 2, 3]
    ctx = _ctx(projections=nn.ModuleDict({"hidden": proj, "embedding": nn.Identity()}))
    # ((1-1)^2 + (2-1)^2 + (3-4)^2) / 3 = 2/3
    assert LOSSES["hidden"].fn(s, t, ctx).item() == pytest.approx(2 / 3)


def test_weighted_sum_and_what_each_loss_needs():
    s = Outputs(logits=torch.tensor([[0.0, 0.0]]))
    t = Outputs(logits=torch.tensor([[math.log(3.0), 0.0]]))
    parts = weighted_losses({"soft": 2.0, "hard": 0.5, "hidden": 0.0}, s, t, _ctx(labels=torch.tensor([0])))
    soft = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert set(parts) == {"soft", "hard", "loss"}
    assert parts["loss"].item() == pytest.approx(2 * soft + 0.5 * -math.log(0.5), rel=1e-5)
    assert needs({"soft": 1, "hard": 1}) == {"logits"}
    assert needs({"hidden": 1, "attention": 1, "embedding": 0}) == {"hidden_states", "attentions"}


def test_regression_soft_and_hard_terms_are_mse():
    s = Outputs(logits=torch.tensor([[1.0], [3.0]]))
    t = Outputs(logits=torch.tensor([[0.0], [1.0]]))
    ctx = _ctx(labels=torch.tensor([1.0, 1.0]), regression=True)
    assert LOSSES["soft"].fn(s, t, ctx).item() == pytest.approx((1 + 4) / 2)
    assert LOSSES["hard"].fn(s, t, ctx).item() == pytest.approx((0 + 4) / 2)
