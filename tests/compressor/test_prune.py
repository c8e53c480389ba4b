"""Structured pruning on tiny models built here: exactness, the cut itself, importance, layer choice, round trips."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    MPNetConfig,
    MPNetForSequenceClassification,
    pipeline,
)

from compressor.modeling import StudentError
from compressor.modeling.prune import ARCHS, IMPORTANCE_MARGIN, Shape, cut, measure, plan_from, prune, student_config
from compressor.modeling.student import layer_map_for, prune_student
from compressor.recipe.schema import PruneConfig, StudentConfig
from compressor.recipe.tasks import GLUE_TASKS

LABELS = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}


def _bert(layers=3, hidden=32, heads=4, ffn=64, seed=0, head=True):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=64, **LABELS)
    return (BertForSequenceClassification if head else BertModel)(config).eval()


def _mpnet(seed=0):
    torch.manual_seed(seed)
    return MPNetForSequenceClassification(MPNetConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3,
                                                      num_attention_heads=4, intermediate_size=64,
                                                      max_position_embeddings=66, **LABELS)).eval()


def _batches(n=3, batch=4, length=12, seed=1, token_types=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 120, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, length // 2:] = 0  # one padded row
        ids[0, length // 2:] = 0
        row = {"input_ids": ids, "attention_mask": mask}
        if token_types:
            row["token_type_ids"] = torch.zeros_like(ids)
        out.append(row)
    return out


def _no_token_types(batch):
    return {k: v for k, v in batch.items() if k != "token_type_ids"}


@pytest.mark.parametrize("make", [_bert, _mpnet], ids=["bert", "mpnet"])
def test_nothing_pruned_reproduces_the_teacher_exactly(make):
    teacher = make()
    batches = _batches(token_types=make is _bert)
    result = prune(teacher, Shape.of(teacher.config), batches, dict(LABELS), layers="uniform")
    assert type(result.student) is type(teacher)
    with torch.no_grad():
        for b in batches:
            assert (teacher(**b).logits - result.student(**b).logits).abs().max() < 1e-5


def test_a_pretrained_encoder_prunes_to_a_classifier_whose_encoder_matches_it():
    encoder = _bert(head=False)
    batches = _batches()
    student = prune(encoder, Shape.of(encoder.config), batches, dict(LABELS), layers="uniform").student
    assert isinstance(student, BertForSequenceClassification) and student.config.id2label[1] == "positive"
    with torch.no_grad():
        for b in batches:
            want = encoder(**b).last_hidden_state
            got = student.bert(**b).last_hidden_state
            assert (want - got).abs().max() < 1e-5 * want.abs().max()


def test_a_pruned_head_dimension_computes_what_a_hand_masked_teacher_computes():
    """Cut 4 heads of 8 dims to 3 heads of 6 (and 32 channels to 18): the student's attention block equals the
    teacher's with the dropped heads, dims and channels zeroed (query scale folded: logits stay q.k/sqrt(8))."""
    teacher = _bert()
    with torch.no_grad():  # peaky attention, so that a wrong softmax scale would show
        for layer in teacher.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(30)
            layer.attention.self.key.weight.mul_(30)
    batches = _batches()
    shape = Shape(3, 18, 40, 3)
    importance = measure(teacher, batches)
    plan = plan_from(importance, Shape.of(teacher.config), shape, [0, 1, 2], ARCHS["bert"])
    student = cut(teacher, plan, student_config(teacher.config, shape, **LABELS))
    layer = 1
    t_attn, s_attn = teacher.bert.encoder.layer[layer].attention, student.bert.encoder.layer[layer].attention

    masked = BertForSequenceClassification(teacher.config).eval()
    masked.load_state_dict(teacher.state_dict())
    m_attn = masked.bert.encoder.layer[layer].attention
    keep_qk = torch.zeros(32, dtype=torch.bool)
    keep_qk[plan.qk[layer]] = True
    keep_v = torch.zeros(32, dtype=torch.bool)
    keep_v[plan.v[layer]] = True
    with torch.no_grad():
        for lin, keep in ((m_attn.self.query, keep_qk), (m_attn.self.key, keep_qk), (m_attn.self.value, keep_v)):
            lin.weight[~keep] = 0
            lin.bias[~keep] = 0
        x = torch.randn(2, 7, 32)
        x_masked = torch.zeros_like(x)
        x_masked[..., plan.hidden] = x[..., plan.hidden]
        want = m_attn.output.dense(m_attn.self(x_masked)[0])[..., plan.hidden]
        got = s_attn.output.dense(s_attn.self(x[..., plan.hidden])[0])
        assert plan.query_scale == pytest.approx((6 / 8) ** 0.5)
        assert (want - got).abs().max() < 1e-5 * want.abs().max()
        # and the scale matters: without the fold the logits would be q.k/sqrt(6)
        unscaled = torch.nn.Linear(18, 18)
        unscaled.load_state_dict({"weight": s_attn.self.query.weight / plan.query_scale,
                                  "bias": s_attn.self.query.bias / plan.query_scale})
        original = s_attn.self.query
        s_attn.self.query = unscaled
        try:
            assert (want - s_attn.output.dense(s_attn.self(x[..., plan.hidden])[0])).abs().max() > 1e-4
        finally:
            s_attn.self.query = original
    assert t_attn.self.query.weight.shape == (32, 32)  # the teacher itself is untouched


def test_planted_dead_neuron_head_and_channel_rank_last():
    teacher = _bert()
    base = teacher.bert
    neuron, head, channel = 17, 2, 9
    with torch.no_grad():
        inter = base.encoder.layer[0].intermediate.dense
        inter.weight[neuron] = 0
        inter.bias[neuron] = -50.0  # GELU(-50) == 0: the neuron never fires
        for layer in base.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                lin.weight[head * 8:(head + 1) * 8] = 0
                lin.bias[head * 8:(head + 1) * 8] = 0
        for norm in [base.embeddings.LayerNorm] + [m for layer in base.encoder.layer
                                                   for m in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]:
            norm.weight[channel] = 0
            norm.bias[channel] = 0
    importance = measure(teacher, _batches())
    assert int(importance.ffn[0].argmin()) == neuron
    for layer in range(3):
        assert int(importance.heads(layer).argmin()) == head
    assert int(importance.hidden_for(range(3), 2).argmin()) == channel

    plan = plan_from(importance, Shape.of(teacher.config), Shape(3, 24, 63, 3), [0, 1, 2], ARCHS["bert"])
    assert neuron not in plan.ffn[0].tolist() and len(plan.ffn[0]) == 63
    assert all(head not in h.tolist() for h in plan.heads)
    assert channel not in plan.hidden.tolist()


def test_auto_layer_choice_keeps_the_candidate_closer_to_the_teacher():
    teacher = _bert(layers=4)
    for steps, key in ((3, "divergence_recovered"), (0, "divergence_at_cut")):
        result = prune(teacher, Shape(2, 24, 48, 4), _batches(n=4), dict(LABELS), layers="auto", recovery_steps=steps)
        choice = result.report["layer_choice"]
        assert choice["criterion"] == key
        scores = {name: c[key] for name, c in choice["candidates"].items()}
        assert set(scores) == {"uniform", "importance"}
        importance_wins = scores["importance"] < (1 - IMPORTANCE_MARGIN) * scores["uniform"]
        assert choice["method"] == ("importance" if importance_wins else "uniform")
        assert result.report["layers"] == choice["candidates"][choice["method"]]["layers"]
        if steps:  # recovery trains a copy: the cut itself is what the student starts from
            uniform = choice["candidates"]["uniform"]
            assert uniform["divergence_recovered"] != uniform["divergence_at_cut"]


def test_an_mpnet_teacher_prunes_into_an_mpnet_student():
    teacher = _mpnet()
    batches = [_no_token_types(b) for b in _batches(token_types=False)]
    result = prune(teacher, Shape(2, 24, 40, 3), batches, dict(LABELS))
    student = result.student
    assert isinstance(student, MPNetForSequenceClassification)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads) == (2, 24, 40, 3)
    # the relative attention bias is shared by all layers: one kept head set for every layer
    assert student.mpnet.encoder.relative_attention_bias.weight.shape == (32, 3)
    assert all(torch.equal(h, result.plan.heads[0]) for h in result.plan.heads)
    with torch.no_grad():
        assert torch.isfinite(student(**batches[0]).logits).all()


def test_a_student_larger_than_its_teacher_is_refused_with_the_fix():
    with pytest.raises(StudentError, match=r"student.hidden_size 48 exceeds the teacher's 32.*init: random"):
        prune(_bert(), Shape(2, 48, 64, 4), _batches(), dict(LABELS))


def test_pruned_student_saves_reloads_pipelines_and_exports_with_parity(tmp_path, tiny_bert_dir):
    """prune_student on the shared tiny BERT (real MiniLM tokenizer): an ordinary HF model end to end."""
    from runtime.export import ExportOptions, export

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    texts = ["a gripping film", "dull and far too long", "the cast is wonderful", "i want my money back"] * 4
    batches = [dict(tokenizer(texts[i:i + 8], padding=True, return_tensors="pt")) for i in range(0, 16, 8)]
    cfg = StudentConfig(num_hidden_layers=1, hidden_size=24, intermediate_size=48, num_attention_heads=4,
                        init="pruned", prune=PruneConfig(layers="uniform"))
    student, projections, report = prune_student(cfg, teacher, GLUE_TASKS["sst2"], batches, str(tiny_bert_dir))
    assert report["layers"] == [2] and student.config.pruned_from["layers"] == [2]
    assert layer_map_for(student.config, teacher.config) == [2]
    # the projections start as the exact inverse of the channel cut: one 1 per student channel
    weight = projections["hidden"].weight
    assert weight.shape == (32, 24) and torch.equal(weight.sum(0), torch.ones(24)) and weight.sum() == 24

    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert again.config.pruned_from["layers"] == [2]
    with torch.no_grad():
        assert torch.equal(again(**batches[0]).logits, student(**batches[0]).logits)
    clf = pipeline("text-classification", model=str(tmp_path / "student"))
    assert clf("a warm, funny film")[0]["label"] in {"negative", "positive"}

    manifest = export(tmp_path / "student", tmp_path / "export", ExportOptions(optimize="O2"), log=lambda *_: None)
    assert manifest["parity"]["fp32"]["max_abs_logit_diff"] < 1e-4
    assert manifest["parity"]["optimized"]["label_agreement"] == 1.0
    assert json.loads((tmp_path / "export" / "config.json").read_text())["hidden_size"] == 24
