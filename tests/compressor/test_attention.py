"""Attention maps of chosen layers only: the same maps as ``output_attentions=True``, no others."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, MPNetConfig, MPNetModel

from compressor.modeling.attention import forward_with_attentions, self_attention_modules


def _model(kind: str):
    torch.manual_seed(0)
    common = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
    if kind == "mpnet":  # the full-scale teacher's architecture: relative position bias added to the scores
        return MPNetModel(MPNetConfig(**common)).eval()
    return BertModel(BertConfig(**common), add_pooling_layer=False).eval()


def _eager_copy(model, folder):
    """The same weights with eager attention everywhere: the reference ``output_attentions=True`` maps
    (transformers 5 returns none from SDPA layers)."""
    model.save_pretrained(folder)
    return type(model).from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind", ["bert", "mpnet"])
def test_chosen_layers_maps_equal_output_attentions_and_others_are_none(kind, tiny_bert_dir, tmp_path):
    model = _model(kind)
    eager = _eager_copy(model, tmp_path)
    batch = AutoTokenizer.from_pretrained(tiny_bert_dir)(["a short one", "a much longer sentence with padding after"],
                                                         padding=True, return_tensors="pt")
    if kind == "mpnet":
        batch.pop("token_type_ids")
    assert len(self_attention_modules(model)) == 3
    with torch.no_grad():
        ref = eager(**batch, output_attentions=True, output_hidden_states=True)
        out = forward_with_attentions(model, [2], **batch, output_hidden_states=True)
    assert out.attentions[0] is None and out.attentions[2] is None
    torch.testing.assert_close(out.attentions[1], ref.attentions[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-5, atol=1e-5)
    # the hooks are gone: a plain call returns no maps
    assert model(**batch).attentions is None


def test_maps_carry_gradients_for_the_student():
    model = _model("bert").train()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    out = forward_with_attentions(model, [1, 2, 3], input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.stack([a.pow(2).sum() for a in out.attentions]).sum().backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
