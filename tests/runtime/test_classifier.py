"""runtime.Classifier: labels/scores/truncation over torch and onnxruntime, and one-line errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from runtime import BackendUnavailable, Classifier, ModelDirError
from runtime.export import parity_sentences

TEXTS = ["a warm , funny and moving film", "the worst two hours i have spent in a cinema",
         "it is neither good nor bad , just long"]


def test_hf_dir_on_torch(tiny_bert_dir):
    clf = Classifier.load(tiny_bert_dir, device="cpu")
    assert clf.backend.name == "torch" and clf.backend.providers == ["torch:cpu"]
    assert clf.labels == ["negative", "positive"] and not clf.is_regression and clf.max_length == 512
    out = clf(TEXTS + ["word " * 600])
    assert [set(o) for o in out] == [{"label", "score", "truncated"}] * 4
    assert [o["truncated"] for o in out] == [False, False, False, True]
    probs = np.exp(clf.logits(TEXTS))
    probs /= probs.sum(1, keepdims=True)
    assert [o["score"] for o in out[:3]] == pytest.approx(probs.max(1).tolist(), abs=1e-5)
    assert [o["label"] for o in out[:3]] == [clf.labels[i] for i in probs.argmax(1)]
    info = clf.info()
    assert info["backend"] == "torch" and info["labels"] == clf.labels and len(info["model_hash"]) == 64


def test_dynamic_padding_and_batching_do_not_change_logits(tiny_bert_dir):
    texts = TEXTS * 3
    one_batch = Classifier.load(tiny_bert_dir, device="cpu", batch_size=32).logits(texts)
    small_batches = Classifier.load(tiny_bert_dir, device="cpu", batch_size=2).logits(texts)
    np.testing.assert_allclose(small_batches, one_batch, atol=1e-5)


def test_max_length_truncates(tiny_bert_dir):
    clf = Classifier.load(tiny_bert_dir, device="cpu", max_length=9)  # TEXTS[0] is exactly 9 tokens
    inputs, truncated = clf.encode(TEXTS)
    assert inputs["input_ids"].shape[1] == 9 and truncated == [False, True, True]
    with pytest.raises(ValueError, match="outside 1..512"):
        Classifier.load(tiny_bert_dir, device="cpu", max_length=10_000)


def test_pairs_and_bad_inputs(tiny_bert_dir):
    clf = Classifier.load(tiny_bert_dir, device="cpu")
    out = clf([("the cat sat", "a cat was sitting"), ("he left", "she stayed")])
    assert len(out) == 2 and all(o["label"] in clf.labels for o in out)
    inputs, _ = clf.encode([("the cat sat", "a cat was sitting")])
    assert inputs["token_type_ids"].max() == 1
    assert clf([]) == []
    for bad in ("just a string", [1, 2], ["text", ("a", "b")]):
        with pytest.raises(TypeError, match="texts must be"):
            clf(bad)
    for blank in (["fine", "  "], [("a", "")]):
        with pytest.raises(ValueError, match="text 1 is empty" if blank[0] == "fine" else "text 0 is empty"):
            clf(blank)


def test_regression_model(tmp_path, tiny_bert_dir):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.num_labels, config.problem_type = 1, "regression"
    BertForSequenceClassification(config).eval().save_pretrained(tmp_path)
    shutil.copy(tiny_bert_dir / "tokenizer.json", tmp_path)
    shutil.copy(tiny_bert_dir / "tokenizer_config.json", tmp_path)
    clf = Classifier.load(tmp_path, device="cpu")
    assert clf.is_regression and clf.labels == []
    out = clf(TEXTS)
    assert [set(o) for o in out] == [{"score", "truncated"}] * 3
    assert [o["score"] for o in out] == pytest.approx(clf.logits(TEXTS)[:, 0].tolist(), abs=1e-5)


def test_export_dir_auto_picks_onnxruntime(tiny_export, tiny_bert_dir):
    clf = Classifier.load(tiny_export, device="cpu")
    assert (clf.backend.name, clf.variant) == ("onnxruntime", "optimized")
    assert clf.info()["providers"] == ["CPUExecutionProvider"]
    torch_clf = Classifier.load(tiny_bert_dir, device="cpu")
    assert clf.model_hash == torch_clf.model_hash
    np.testing.assert_allclose(clf.logits(TEXTS), torch_clf.logits(TEXTS), atol=1e-5)
    int8 = Classifier.load(tiny_export, backend="onnxruntime", variant="int8")
    assert int8.variant == "int8" and int8.info()["variant"] == "int8"
    np.testing.assert_allclose(int8.logits(TEXTS), torch_clf.logits(TEXTS), atol=0.05)


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_errors_name_the_fix(tmp_path, tiny_bert_dir, tiny_export, minilm_dir):
    with pytest.raises(ModelDirError, match="is not a directory"):
        Classifier.load(tmp_path / "missing")
    with pytest.raises(ModelDirError, match="has no config.json"):
        Classifier.load(tmp_path)
    with pytest.raises(ModelDirError, match="has no id2label") as err:
        Classifier.load(minilm_dir)  # a bare encoder: no classification head
    assert "fine-tune" in _one_line(err.value)
    no_tok = tmp_path / "no_tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert_dir / name, no_tok)
    with pytest.raises(ModelDirError, match="no tokenizer files") as err:
        Classifier.load(no_tok)
    assert "save_pretrained" in _one_line(err.value)
    with pytest.raises(ModelDirError, match="runtime.export"):
        Classifier.load(tiny_bert_dir, backend="onnxruntime")
    with pytest.raises(ValueError, match="not one of auto"):
        Classifier.load(tiny_bert_dir, backend="openvino")
    with pytest.raises(ModelDirError, match="no tensorrt variant|--tensorrt"):
        Classifier.load(tiny_export, backend="tensorrt", variant="tensorrt", device="cpu")


def test_cuda_graphs_is_named_not_chosen_by_auto(tiny_bert_dir, tiny_export):
    from runtime.backends import gpu_available

    with pytest.raises(ModelDirError, match="without PyTorch weights.*cuda-graphs"):
        Classifier.load(tiny_export, backend="cuda-graphs")
    if gpu_available():
        pytest.skip("a GPU is present: covered by the GPU tests")
    assert Classifier.load(tiny_bert_dir).backend.name == "torch"  # auto on a CPU machine
    with pytest.raises(BackendUnavailable) as err:
        Classifier.load(tiny_bert_dir, backend="cuda-graphs")
    assert "backend 'torch'" in _one_line(err.value)


def test_export_dir_on_cuda_without_gpu(tiny_export):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu")
    with pytest.raises(BackendUnavailable) as err:
        Classifier.load(tiny_export, backend="onnxruntime", device="cuda")
    assert "onnxruntime-gpu" in _one_line(err.value)


@pytest.mark.slow
def test_real_minilm_same_labels_torch_and_onnxruntime(minilm_clf_dir, minilm_export, sst2_dev):
    texts, _, gold = parity_sentences(sst2_dev, 96)
    torch_out = Classifier.load(minilm_clf_dir, backend="torch", device="cpu")(texts)
    for variant in ("fp32", "optimized"):
        ort = Classifier.load(minilm_export, backend="onnxruntime", variant=variant, device="cpu")
        assert ort.info()["providers"] == ["CPUExecutionProvider"]
        ort_out = ort(texts)
        assert [o["label"] for o in ort_out] == [o["label"] for o in torch_out]
        assert [o["score"] for o in ort_out] == pytest.approx([o["score"] for o in torch_out], abs=1e-4)
    accuracy = np.mean([o["label"] == ("positive" if g else "negative") for o, g in zip(torch_out, gold)])
    assert accuracy > 0.6
    assert json.loads((minilm_export / "config.json").read_text())["finetuning_task"] == "sst2"
    assert Classifier.load(minilm_export).is_pair is False


def test_auto_skips_a_variant_whose_parity_did_not_pass(tiny_export, tmp_path):
    """An fp16 graph recorded as 'needs a GPU' (or any variant not verified) is never picked by auto."""
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["parity"]["optimized"] = {"status": "needs a GPU", "reason": "no CPU kernel"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    clf = Classifier.load(copy, device="cpu")
    assert (clf.backend.name, clf.variant) == ("onnxruntime", "fp32")
    asked = Classifier.load(copy, device="cpu", variant="optimized")  # named explicitly: the caller's choice
    assert asked.variant == "optimized"
    manifest["parity"]["fp32"] = {"status": "needs a GPU"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable, match="parity did not pass") as err:
        Classifier.load(copy, backend="onnxruntime", device="cpu")
    assert "\n" not in str(err.value)


def _ort_cuda() -> bool:
    import onnxruntime

    from runtime.backends import gpu_available

    return gpu_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_hf_dir_on_cuda_matches_cpu(tiny_bert_dir):
    cpu = Classifier.load(tiny_bert_dir, device="cpu")
    gpu = Classifier.load(tiny_bert_dir)  # auto: the GPU first
    assert gpu.backend.providers == ["torch:cuda"] and gpu.backend.device == "cuda"
    np.testing.assert_allclose(gpu.logits(TEXTS * 20), cpu.logits(TEXTS * 20), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_hf_dir_on_cuda_graphs_matches_cpu(tiny_bert_dir):
    cpu = Classifier.load(tiny_bert_dir, device="cpu", batch_size=8)
    graphs = Classifier.load(tiny_bert_dir, backend="cuda-graphs", batch_size=8)
    assert graphs.backend.name == "cuda-graphs" and graphs.backend.providers == ["torch:cuda", "cuda-graphs"]
    texts = [*TEXTS * 7, "one more"]  # batches of 8 and a short last one: padded rows and tokens are masked
    np.testing.assert_allclose(graphs.logits(texts), cpu.logits(texts), atol=1e-4)
    assert graphs.info()["backend"] == "cuda-graphs"


@pytest.mark.gpu
@pytest.mark.skipif(not _ort_cuda(), reason="needs a CUDA GPU and onnxruntime-gpu")
def test_fp16_export_is_verified_on_cuda_and_served_first(tiny_bert_dir, tmp_path):
    from runtime.export import ExportOptions, export

    manifest = export(tiny_bert_dir, tmp_path / "out", ExportOptions(fp16=True), log=lambda *_: None)
    assert manifest["parity"]["fp16"]["device"] == "cuda" and manifest["parity"]["fp16"]["status"] == "passed"
    clf = Classifier.load(tmp_path / "out")
    assert clf.variant == "fp16" and "CUDAExecutionProvider" in clf.info()["providers"]


def test_one_tokenisation_matches_hf_and_flags_truncation(tiny_bert_dir, sst2_dev):
    """The fast path gives HF's own ids for texts and pairs (longest-first truncation), and flags exactly the
    inputs that HF's untruncated tokenisation finds longer than max_length."""
    from transformers import AutoTokenizer

    texts, _, _ = parity_sentences(sst2_dev, 40)
    pairs = list(zip(texts[:20], texts[20:]))
    hf = AutoTokenizer.from_pretrained(tiny_bert_dir)
    clf = Classifier.load(tiny_bert_dir, device="cpu", max_length=40)
    flags = []
    for batch, args in ((texts, (texts,)), (pairs, ([a for a, _ in pairs], [b for _, b in pairs]))):
        inputs, truncated = clf.encode(batch)
        expected = hf(*args, truncation=True, max_length=40, padding="longest", return_tensors="np")
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            np.testing.assert_array_equal(inputs[key], expected[key])
        full_lengths = [len(ids) for ids in hf(*args)["input_ids"]]
        assert truncated == [n > 40 for n in full_lengths]
        flags += truncated
    assert 0 < sum(flags) < len(flags)


def test_length_groups_keep_order_and_answers(tiny_bert_dir, sst2_dev):
    """Grouped by length, answers come back in input order and equal one-text-at-a-time answers."""
    from runtime.classifier import length_groups

    texts, _, _ = parity_sentences(sst2_dev, 48)
    texts = texts + ["word " * 300]  # one long text must not pad the short ones' calls
    clf = Classifier.load(tiny_bert_dir, device="cpu", batch_size=16)
    calls = []
    run = clf.backend.run
    clf.backend.run = lambda feed: calls.append(feed["input_ids"].shape) or run(feed)
    grouped = clf.logits(texts)
    alone = np.concatenate([clf.logits([t]) for t in texts])
    np.testing.assert_allclose(grouped, alone, atol=1e-5)
    grouped_calls = calls[:len(calls) - len(texts)]
    assert all(rows <= 16 for rows, _ in grouped_calls)
    assert sum(rows * width for rows, width in grouped_calls) < 1.5 * sum(width for _, width in calls[-len(texts):])
    assert [(g.start, g.stop) for g in length_groups(np.array([5, 5, 6, 6, 100]), 3)] == [(0, 3), (3, 4), (4, 5)]


def test_input_kind_key_wins_over_the_task_name(tmp_path, tiny_bert_dir):
    from runtime.classifier import is_pair_task

    def kind(value):
        return {"task_specific_params": {"text-classification": {"input_kind": value}}}

    assert is_pair_task({**kind("pair"), "finetuning_task": "sst2"}) is True
    assert is_pair_task({**kind("single"), "finetuning_task": "mrpc"}) is False
    assert is_pair_task({"finetuning_task": "mrpc"}) is True and is_pair_task({}) is None
    with pytest.raises(ModelDirError, match="one of single, pair"):
        is_pair_task(kind("triple"))
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert_dir / name, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, **kind("pair")}))
    assert Classifier.load(tmp_path, device="cpu").is_pair is True


def test_thread_settings_reach_the_onnxruntime_session(tiny_export):
    from runtime.backends import Threads

    clf = Classifier.load(tiny_export, device="cpu", threads=Threads(intra_op=1, inter_op=1, spinning=False))
    options = clf.backend.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert clf.info()["threads"] == {"intra_op": 1, "inter_op": 1, "spinning": False}
    default = Classifier.load(tiny_export, device="cpu").backend.session.get_session_options()
    assert default.intra_op_num_threads == 0  # ORT's own choice: one per core
