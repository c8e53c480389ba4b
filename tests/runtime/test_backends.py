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
    assert set(BACKENDS) == {"torch", "onnxruntime", "tensorrt", "cuda-graphs"}


def test_cuda_graphs_backend_off_gpu_says_what_to_use(tiny_bert_dir):
    from runtime.backends import gpu_available

    with pytest.raises(ValueError, match="runs on a GPU, not cpu") as err:
        BACKENDS["cuda-graphs"](tiny_bert_dir, device="cpu")
    assert "\n" not in str(err.value)
    if gpu_available():
        pytest.skip("a GPU is present: covered by the GPU tests")
    with pytest.raises(BackendUnavailable) as err:
        BACKENDS["cuda-graphs"](tiny_bert_dir)
    message = str(err.value)
    assert "\n" not in message and "CUDA GPU" in message and "backend 'torch'" in message


def test_tensorrt_ep_gets_profile_shapes_and_engine_cache(monkeypatch, tiny_export, tmp_path):
    """ORT's TensorRT EP builds engines at request time unless told the shape range and where to cache them."""
    import onnxruntime

    seen = {}

    class Session:
        def __init__(self, path, options, providers):
            seen["providers"] = providers

        def get_providers(self):
            return [p[0] if isinstance(p, tuple) else p for p in seen["providers"]]

        def get_inputs(self):
            return [type("I", (), {"name": n}) for n in ("input_ids", "attention_mask", "token_type_ids")]

        def get_outputs(self):
            return [type("O", (), {"name": "logits", "type": "tensor(float)"})]

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    onnxruntime_backend(tiny_export / "model.onnx", device="cuda:1", tensorrt_ep=True, trt_max_batch=16,
                        trt_max_seq=64)
    name, options = seen["providers"][0]
    assert name == "TensorrtExecutionProvider" and options["device_id"] == 1 and options["trt_fp16_enable"]
    names = ("input_ids", "attention_mask", "token_type_ids")
    assert options["trt_profile_min_shapes"] == ",".join(f"{n}:1x1" for n in names)
    assert options["trt_profile_opt_shapes"] == ",".join(f"{n}:8x32" for n in names)
    assert options["trt_profile_max_shapes"] == ",".join(f"{n}:16x64" for n in names)
    cache = tiny_export / "trt_cache"  # default: beside the model, so a restart reuses the engine
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(cache)
    assert options["trt_timing_cache_enable"] and options["trt_timing_cache_path"] == str(cache)
    onnxruntime_backend(tiny_export / "model.onnx", device="cuda", tensorrt_ep=True, trt_cache_dir=tmp_path)
    assert seen["providers"][0][1]["trt_engine_cache_path"] == str(tmp_path)
    assert seen["providers"][0][1]["trt_profile_max_shapes"].endswith("token_type_ids:64x128")  # defaults
