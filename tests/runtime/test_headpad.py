"""Head-size padding is exact: same logits (FP32, CPU, real padding masks) before and after."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from runtime.backends import onnxruntime_backend
from runtime.export import ExportOptions, export, fused_node_counts
from runtime.headpad import pad_attention_heads, padded_size

SENTENCES = ["a gripping , beautifully acted drama", "dull", "the plot makes no sense and the jokes fall flat ,"
             " but the cast seems to be having fun", "an unexpected delight"]


def _head26_model(attn: str) -> BertForSequenceClassification:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=52, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, attn_implementation=attn)
    return BertForSequenceClassification(config).eval()


def _batch(tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    return dict(tok(SENTENCES, padding=True, return_tensors="pt"))


def _logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch).logits


@pytest.mark.parametrize("multiple,expected", [(8, {26: 32, 32: 32, 1: 8, 64: 64}), (48, {32: 48})])
def test_padded_size(multiple, expected):
    assert {h: padded_size(h, multiple) for h in expected} == expected


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_padding_head_size_26_is_exact(attn, minilm_dir):
    model = _head26_model(attn)
    batch = _batch(minilm_dir)
    assert batch["attention_mask"].min() == 0  # real padding in the batch
    before = _logits(model, batch)
    summary = pad_attention_heads(model)
    assert summary["padded"] and (summary["head_size"], summary["padded_head_size"]) == (26, 32)
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 2 * 32
    torch.testing.assert_close(_logits(model, batch), before, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_padding_real_minilm_is_exact(minilm_dir):
    """MiniLM's heads are 32 wide (already a multiple of 8: left alone); padding them to 48 is exact."""
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=2).eval()
    batch = _batch(minilm_dir)
    before = _logits(model, batch)
    assert pad_attention_heads(model)["padded"] is False
    summary = pad_attention_heads(model, multiple=48)
    assert summary["padded_head_size"] == 48
    torch.testing.assert_close(_logits(model, batch), before, atol=1e-5, rtol=0)


def _head26_dir(tmp_path, minilm_dir):
    src = tmp_path / "head26"
    model = _head26_model("eager")
    model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    model.save_pretrained(src)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(src)
    return src


def test_head_size_26_fuses_on_cpu_without_padding(tmp_path, minilm_dir):
    """ORT's CPU Attention fusion accepts 26-wide heads: padding is for GPU kernels, not for fusion."""
    manifest = export(_head26_dir(tmp_path, minilm_dir), tmp_path / "out", log=lambda *_: None)
    assert manifest["fusion"]["optimized"]["counts"]["Attention"] == 2
    assert manifest["head_padding"] == {"padded": False}


def test_export_with_pad_heads_fuses_and_matches(tmp_path, minilm_dir):
    """--pad-heads: the ONNX graph has 32-wide heads, still fuses, and matches the unpadded PyTorch model."""
    src = _head26_dir(tmp_path, minilm_dir)
    manifest = export(src, tmp_path / "out", ExportOptions(pad_heads=True), log=lambda *_: None)
    padding = manifest["head_padding"]
    assert padding["padded"] and padding["padded_head_size"] == 32 and padding["max_abs_logit_diff"] <= 1e-5
    for variant in ("fp32", "optimized"):
        assert manifest["parity"][variant]["max_abs_logit_diff"] <= 1e-5
    assert fused_node_counts(tmp_path / "out" / "model_optimized.onnx")["Attention"] == 2
    batch = {k: v.numpy() for k, v in _batch(minilm_dir).items()}
    onnx_logits = onnxruntime_backend(tmp_path / "out" / "model.onnx")(batch)
    reference = _logits(AutoModelForSequenceClassification.from_pretrained(src).eval(),
                        {k: torch.from_numpy(v) for k, v in batch.items()}).numpy()
    np.testing.assert_allclose(onnx_logits, reference, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_size"] == 52
