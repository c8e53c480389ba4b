"""runtime.export: files, manifest, fused-node counts, parity, optimum compatibility, one-line CLI errors."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from runtime.backends import gpu_available, onnxruntime_backend
from runtime.classifier import Classifier, sha256_file
from runtime.export import ExportError, ExportOptions, check_parity, export, main, parity_sentences

VARIANTS = {"fp32": "model.onnx", "optimized": "model_optimized.onnx", "fp16": "model_fp16.onnx",
            "int8": "model_int8.onnx"}


def _manifest(export_dir):
    return json.loads((export_dir / "manifest.json").read_text())


def test_tiny_export_files_and_manifest(tiny_export, tiny_bert_dir):
    manifest = _manifest(tiny_export)
    assert manifest["variants"] == VARIANTS
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tiny_export / name), name
    assert manifest["source"]["sha256"] == sha256_file(tiny_bert_dir / "model.safetensors")
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["opset"] >= 14
    assert {"torch", "transformers", "optimum", "onnx", "onnxruntime"} <= manifest["versions"].keys()
    config = json.loads((tiny_export / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert (tiny_export / "tokenizer.json").is_file()
    for variant in VARIANTS:
        assert manifest["parity"][variant]["status"] == "passed", variant
        assert manifest["parity"][variant]["n"] == 32
    assert manifest["parity"]["fp32"]["max_abs_logit_diff"] < 1e-5
    sizes = {v: manifest["files"][f]["size_mb"] for v, f in VARIANTS.items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]


def test_tiny_fused_node_counts(tiny_export):
    fusion = _manifest(tiny_export)["fusion"]["optimized"]
    counts = fusion["counts"]
    assert fusion["attention_fused"] and counts["Attention"] == 2
    assert counts["SkipLayerNormalization"] == 4 and counts["BiasGelu"] == 2


def test_optimum_loads_export_dir_and_agrees(tiny_export):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    texts = ["a warm and funny film", "two hours I will never get back , sadly"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    classifier = Classifier.load(tiny_export, backend="onnxruntime", variant="fp32")
    for variant, file_name in (("fp32", "model.onnx"), ("int8", "model_int8.onnx")):
        ort_model = ORTModelForSequenceClassification.from_pretrained(tiny_export, file_name=file_name)
        expected = ort_model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
        got = Classifier.load(tiny_export, backend="onnxruntime", variant=variant).logits(texts)
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert ort_model.config.id2label == {0: "negative", 1: "positive"}
    np.testing.assert_allclose(classifier.logits(texts), ORTModelForSequenceClassification.from_pretrained(
        tiny_export)(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy(), atol=1e-5, rtol=1e-5)


def test_parity_failure_is_one_line():
    result = {"n": 200, "max_abs_logit_diff": 0.8, "label_agreement": 0.9}
    with pytest.raises(ExportError, match=r"int8 parity failed: label agreement 90.00% < 95.00%.*--int8-min-agreement"):
        check_parity("int8", result, ExportOptions(), is_regression=False)
    check_parity("int8", dict(result), ExportOptions(int8_min_agreement=0.85), is_regression=False)
    with pytest.raises(ExportError, match="fp32 parity failed"):
        check_parity("fp32", {"n": 5, "max_abs_logit_diff": 0.5}, ExportOptions(), is_regression=True)


def test_parity_sentences_real_glue(glue_dir):
    texts, source, gold = parity_sentences(glue_dir / "SST-2" / "dev.tsv", 50)
    assert len(texts) == 50 and all(isinstance(t, str) and t for t in texts) and set(gold) == {0, 1}
    pairs, _, gold = parity_sentences(glue_dir / "MRPC" / "dev.tsv", 10)
    assert all(isinstance(p, tuple) and len(p) == 2 for p in pairs) and gold is not None
    builtin, source, gold = parity_sentences(None, 1000)
    assert len(builtin) >= 30 and gold is None and "built-in" in source


@pytest.mark.parametrize("argv,message", [
    (["{missing}", "--out", "{out}"], "is not a directory"),
    (["{minilm}", "--out", "{out}"], "has no id2label"),
    (["{tiny}", "--out", "{out}", "--tensorrt"], "TensorRT needs an NVIDIA GPU|tensorrt is not installed"),
    (["{tiny}", "--out", "{out}", "--int8-min-agreement", "1.5"], "between 0 and 1"),
    (["{tiny}", "--out", "{out}", "--opset", "5"], r"ONNX export \(optimum\) failed: "),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys, minilm_dir, tiny_bert_dir):
    paths = {"missing": tmp_path / "nope", "out": tmp_path / "out", "minilm": minilm_dir, "tiny": tiny_bert_dir}
    assert main([a.format(**paths) for a in argv]) == 2
    stderr = capsys.readouterr().err.strip()
    err = stderr.splitlines()[-1]  # libraries may log warnings first; ours is the last line
    assert err.startswith("error: ") and "Traceback" not in stderr
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_existing_out_needs_overwrite(tiny_export, tiny_bert_dir, capsys):
    before = sha256_file(tiny_export / "manifest.json")
    assert main([str(tiny_bert_dir), "--out", str(tiny_export)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sha256_file(tiny_export / "manifest.json") == before


@pytest.mark.slow
def test_real_minilm_export(minilm_export, minilm_clf_dir):
    manifest = _manifest(minilm_export)
    fusion = manifest["fusion"]["optimized"]
    assert fusion["attention_fused"], fusion["notes"]
    assert fusion["counts"]["Attention"] == 6
    assert fusion["counts"]["SkipLayerNormalization"] == 12
    assert fusion["counts"]["BiasGelu"] == 6
    for variant in ("fp32", "optimized"):
        parity = manifest["parity"][variant]
        assert parity["n"] == 128 and parity["label_agreement"] == 1.0 and parity["max_abs_logit_diff"] < 1e-4
    int8 = manifest["parity"]["int8"]
    assert int8["status"] == "passed" and int8["label_agreement"] >= 0.9
    assert manifest["parity"]["fp32"]["torch_accuracy"] > 0.6  # the fitted head is a real sentiment classifier
    assert manifest["source"]["sha256"] == sha256_file(minilm_clf_dir / "model.safetensors")


@pytest.mark.slow
def test_real_minilm_optimum_agrees(minilm_export, sst2_dev):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    texts, _, _ = parity_sentences(sst2_dev, 16)
    tokenizer = AutoTokenizer.from_pretrained(minilm_export)
    ort_model = ORTModelForSequenceClassification.from_pretrained(minilm_export, file_name="model_optimized.onnx")
    expected = ort_model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(Classifier.load(minilm_export).logits(texts), expected, atol=1e-5, rtol=1e-5)
    backend = onnxruntime_backend(minilm_export / "model.onnx")
    assert backend.providers == ["CPUExecutionProvider"]


# ------------------------------------------------------------------------- where parity runs

def test_parity_batches_fit_a_tensorrt_profile_smaller_than_the_parity_set(monkeypatch, tiny_bert_dir, tmp_path):
    """--max-batch 8 with 32 parity sentences: every variant is checked in batches the engine's profile accepts
    (the same batches go to the TensorRT engine on a GPU machine; tests/runtime/test_tensorrt.py builds one)."""
    import runtime.export as export_module

    real, rows = export_module.onnxruntime_backend, []

    def measured(path, **kwargs):
        backend = real(path, **kwargs)
        return lambda feed: rows.append(len(feed["input_ids"])) or backend(feed)

    monkeypatch.setattr(export_module, "onnxruntime_backend", measured)
    manifest = export(tiny_bert_dir, tmp_path / "out", ExportOptions(optimize=None, max_batch=8, max_seq=64),
                      log=lambda *_: None)
    assert manifest["parity"]["fp32"]["n"] == 32 and manifest["parity"]["fp32"]["status"] == "passed"
    assert rows and max(rows) <= 8  # the parity batches, and the warm-up batch before the timed rows/s


@pytest.mark.skipif(gpu_available(), reason="checks a machine without a GPU")
def test_fp16_parity_without_a_gpu_is_measured_and_recorded_on_the_cpu(tiny_export):
    """No GPU here: the fp16 graph's parity is measured on the CPU, and the manifest says so (a serving machine
    with a GPU and onnxruntime-gpu measures it on the CUDA EP: test_fp16_parity_on_a_gpu_is_measured_on_cuda)."""
    fp16 = _manifest(tiny_export)["parity"]["fp16"]
    assert (fp16["status"], fp16["device"]) == ("passed", "cpu"), fp16
    assert fp16["n"] == 32
    assert fp16["max_abs_logit_diff"] < 5e-2 and fp16["label_agreement"] >= 0.995


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU and onnxruntime-gpu")
def test_fp16_parity_on_a_gpu_is_measured_on_cuda(tiny_bert_dir, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    manifest = export(tiny_bert_dir, tmp_path / "out", ExportOptions(optimize=None, fp16=True), log=lambda *_: None)
    assert manifest["parity"]["fp16"]["status"] == "passed" and manifest["parity"]["fp16"]["device"] == "cuda"
    assert manifest["parity"]["fp32"]["device"] == "cpu"


def test_fp16_that_cuda_cannot_start_is_recorded_not_passed(monkeypatch, tiny_bert_dir, tmp_path):
    import onnxruntime

    import runtime.export as export_module
    from runtime.backends import BackendUnavailable

    real = export_module.onnxruntime_backend

    def backend(path, device="cpu", **kwargs):
        if device == "cuda":
            raise BackendUnavailable("onnxruntime could not start CUDAExecutionProvider (session runs on CPU)")
        return real(path, **kwargs)

    monkeypatch.setattr("runtime.backends.gpu_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(export_module, "onnxruntime_backend", backend)
    manifest = export(tiny_bert_dir, tmp_path / "out", ExportOptions(optimize=None, fp16=True), log=lambda *_: None)
    fp16 = manifest["parity"]["fp16"]
    assert fp16["status"] == "not verified" and "could not start CUDAExecutionProvider" in fp16["reason"]


def test_cli_flags_are_the_options_fields_with_their_defaults(tmp_path):
    """Every ExportOptions field but the regression tolerances is a flag whose default is the field's own."""
    import dataclasses

    from runtime.export import build_parser

    parser = build_parser()
    args = vars(parser.parse_args([str(tmp_path), "--out", str(tmp_path / "o")]))
    defaults = {k: v for k, v in dataclasses.asdict(ExportOptions()).items() if k != "regression_atol"}
    assert {k: args.get(k) for k in defaults} == defaults
    flags = vars(parser.parse_args([str(tmp_path), "--out", "o", "--no-optimize", "--max-batch", "8", "--int8",
                                    "--parity-data", "dev.tsv", "--int8-min-agreement", "0.9"]))
    assert (flags["optimize"], flags["max_batch"], flags["int8"], str(flags["parity_data"]),
            flags["int8_min_agreement"]) == (None, 8, True, "dev.tsv", 0.9)
