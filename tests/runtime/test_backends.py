"""Back ends on already-tokenised inputs: what runs is what they report."""
from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from runtime.backends import BACKENDS, BackendUnavailable, onnxruntime_backend, tensorrt_backend, torch_backend


def _inputs(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = tok(["a fine film", "an overlong , tedious mess of a movie"], padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def test_torch_and_onnxruntime_agree(tiny_bert_dir, tiny_export):
    inputs = _inputs(tiny_bert_dir)
    torch_b = torch_backend(tiny_bert_dir)
    ort_b = onnxruntime_backend(tiny_export / "model.onnx")
    assert (torch_b.name, torch_b.device, torch_b.providers) == ("torch", "cpu", ["torch:cpu"])
    assert (ort_b.name, ort_b.providers) == ("onnxruntime", ["CPUExecutionProvider"])
    assert set(ort_b.input_names) == {"input_ids", "attention_mask", "token_type_ids"}
    expected = torch_b(inputs)
    assert expected.dtype == np.float32 and expected.shape == (2, 2)
    np.testing.assert_allclose(ort_b(inputs), expected, atol=1e-5)
    no_types = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    np.testing.assert_allclose(ort_b(no_types), expected, atol=1e-5)
    assert onnxruntime_backend(tiny_export / "model_fp16.onnx").precision == "fp32"  # fp32 I/O kept


def test_missing_inputs_and_files(tiny_export):
    backend = onnxruntime_backend(tiny_export / "model.onnx")
    with pytest.raises(ValueError, match="attention_mask"):
        backend({"input_ids": np.ones((1, 3), np.int64)})
    with pytest.raises(FileNotFoundError, match="runtime.export"):
        onnxruntime_backend(tiny_export / "nope.onnx")


def test_gpu_backends_unavailable_here_say_how_to_fix(tiny_export):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable, match=r"lacks CUDAExecutionProvider: pip install"):
        onnxruntime_backend(tiny_export / "model.onnx", device="cuda")
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider.*tensorrt"):
        onnxruntime_backend(tiny_export / "model.onnx", device="cuda", tensorrt_ep=True)


def test_tensorrt_backend_off_gpu(tmp_path):
    pytest.importorskip("torch")
    from runtime.backends import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: covered by test_tensorrt.py")
    with pytest.raises(BackendUnavailable) as err:
        tensorrt_backend(tmp_path / "model_fp16.engine")
    assert "\n" not in str(err.value) and ("GPU" in str(err.value) or "tensorrt" in str(err.value))


def test_registry_names():
    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt"}
