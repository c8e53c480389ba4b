"""TensorRT builder: what can be checked without a GPU, and the GPU path where one exists."""
from __future__ import annotations

import json

import pytest

from runtime.backends import BackendUnavailable, gpu_available
from runtime.tensorrt import BuildSettings, ProfileShapes, profile_shapes, require_tensorrt


def _has_tensorrt() -> bool:
    try:
        require_tensorrt()
    except BackendUnavailable:
        return False
    return True


def test_profile_covers_batch_and_sequence_ranges():
    shapes = profile_shapes(max_batch=64, max_seq=128)
    assert shapes == ProfileShapes(min=(1, 1), opt=(32, 64), max=(64, 128))
    assert profile_shapes(1, 1) == ProfileShapes((1, 1), (1, 1), (1, 1))
    assert profile_shapes(256, 512, opt_batch=32, opt_seq=48).opt == (32, 48)
    with pytest.raises(ValueError, match=">= 1"):
        profile_shapes(0, 128)
    with pytest.raises(ValueError, match="outside"):
        profile_shapes(8, 128, opt_batch=16)


def test_build_settings_json():
    settings = BuildSettings("model.onnx", ["input_ids", "attention_mask"], profile_shapes(8, 64),
                             tensorrt_version="10.x", gpu="test")
    data = json.loads(settings.to_json())
    assert data["shapes"] == {"min": [1, 1], "opt": [4, 32], "max": [8, 64]}
    assert data["fp16"] is True and data["inputs"] == ["input_ids", "attention_mask"]
    assert data["timing_cache"] == "timing.cache"


def test_missing_tensorrt_is_one_line():
    if _has_tensorrt():
        pytest.skip("tensorrt and a GPU are present")
    with pytest.raises(BackendUnavailable) as err:
        require_tensorrt()
    message = str(err.value)
    assert "\n" not in message and ("pip install" in message or "GPU" in message)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU and tensorrt (pip install '.[tensorrt]')")
def test_engine_build_and_run(tiny_bert_dir, tmp_path):
    pytest.importorskip("tensorrt", reason="needs tensorrt (pip install '.[tensorrt]')")
    from runtime import Classifier
    from runtime.export import ExportOptions, export

    manifest = export(tiny_bert_dir, tmp_path / "out", ExportOptions(tensorrt=True, max_batch=8, max_seq=64),
                      log=lambda *_: None)
    assert manifest["parity"]["tensorrt"]["status"] == "passed"
    settings = json.loads((tmp_path / "out" / "model_fp16.engine.json").read_text())
    assert settings["shapes"]["max"] == [8, 64] and (tmp_path / "out" / "timing.cache").is_file()
    clf = Classifier.load(tmp_path / "out", backend="tensorrt", device="cuda")
    assert clf.backend.providers == ["tensorrt"] and len(clf(["a fine film"])) == 1
