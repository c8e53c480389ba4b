"""TensorRT: what a build is given, checked on a real exported ONNX graph (the optimisation profile derived from
its inputs, the FP16 graph a TensorRT 11 build starts from), the runner's profile check, and the build and the
runner themselves where a GPU and TensorRT exist (``-m gpu``, run by the GPU check)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from runtime.backends import BackendUnavailable, gpu_available, onnxruntime_backend, tensorrt_backend
from runtime.bench.timing import synthetic_batch
from runtime.tensorrt import (
    ENGINE_NAME,
    FP32_OPS,
    ProfileShapes,
    fp16_graph,
    onnx_profile,
    profile_shapes,
    require_tensorrt,
)

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _has_tensorrt() -> bool:
    try:
        require_tensorrt()
    except BackendUnavailable:
        return False
    return True


# ------------------------------------------------------------------------------- the build's inputs

def test_the_profile_spans_every_input_of_the_exported_graph(tiny_export):
    profile = onnx_profile(tiny_export / "model.onnx", max_batch=8, max_seq=64)
    assert list(profile) == INPUTS  # the graph's inputs, in its order; its initialisers are not inputs
    assert set(profile.values()) == {ProfileShapes(min=(1, 1), opt=(4, 32), max=(8, 64))}


def test_a_graph_exported_with_a_fixed_batch_is_refused_before_any_build(tiny_export, tmp_path):
    model = onnx.load(str(tiny_export / "model.onnx"))
    for value in model.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1  # what an export without dynamic axes declares
    onnx.save(model, str(tmp_path / "static.onnx"))
    with pytest.raises(ValueError, match="input 'input_ids' has a fixed batch of 1 but the profile spans 1..8") as err:
        onnx_profile(tmp_path / "static.onnx", max_batch=8, max_seq=64)
    assert "\n" not in str(err.value)
    assert list(onnx_profile(tmp_path / "static.onnx", max_batch=1, max_seq=64)) == INPUTS  # a profile it fits


def _element_types(model) -> dict[str, str]:
    """Every tensor's element type, by name, after ONNX shape inference."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    return {name: TensorProto.DataType.Name(t) for name, t in types.items()}


def test_the_fp16_graph_computes_in_fp16_but_keeps_layernorm_and_softmax_in_fp32(tiny_export):
    """The graph a strongly typed (TensorRT 11) build parses: matrix products in FP16, the reductions that lose
    the small differences they exist to see in FP32, the int64 inputs and fp32 logits the FP32 graph has, and
    the FP32 graph's logits within FP16 rounding."""
    converted = fp16_graph(onnx.load(str(tiny_export / "model.onnx")))
    types = _element_types(converted)
    kept = [n for n in converted.graph.node if n.op_type in FP32_OPS]
    assert {n.op_type for n in kept} == {"LayerNormalization", "Softmax"}  # the real graph has both
    for node in kept:
        assert {types[t] for t in [*node.input, *node.output] if t} == {"FLOAT"}, node.name
    matmuls = [n for n in converted.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(types[n.output[0]] == "FLOAT16" for n in matmuls)
    assert [types[i.name] for i in converted.graph.input] == ["INT64"] * 3
    assert [types[o.name] for o in converted.graph.output] == ["FLOAT"]
    feed = synthetic_batch(3, 12, 30522, seed=1)
    expected = onnxruntime_backend(tiny_export / "model.onnx")(feed)
    import onnxruntime

    got = onnxruntime.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_allclose(got[0], expected, atol=2e-3)


# ---------------------------------------------------------------------------------------- the runner's profile

def test_a_shape_outside_the_profile_is_one_line_naming_the_rebuild():
    profile = profile_shapes(max_batch=4, max_seq=64)
    assert profile.fits((4, 64)) and profile.fits((1, 1))
    for shape, fix in (((5, 16), "--max-batch 5 --max-seq 64"), ((2, 65), "--max-batch 4 --max-seq 65")):
        assert not profile.fits(shape)
        message = str(profile.refusal(shape, Path("export/model_fp16.engine")))
        assert "outside the engine's optimisation profile (batch 1..4, sequence 1..64)" in message
        assert fix in message and "export/model_fp16.engine" in message and "\n" not in message
    assert not profile.fits((2,)) and not profile.fits((0, 8))


def test_profile_covers_batch_and_sequence_ranges():
    shapes = profile_shapes(max_batch=64, max_seq=128)
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 1), (32, 64), (64, 128))
    assert profile_shapes(256, 512, opt_batch=32, opt_seq=48).opt == (32, 48)
    with pytest.raises(ValueError, match=">= 1"):
        profile_shapes(0, 128)
    with pytest.raises(ValueError, match="outside"):
        profile_shapes(8, 128, opt_batch=16)


def test_missing_tensorrt_is_one_line():
    if _has_tensorrt():
        pytest.skip("tensorrt and a GPU are present")
    with pytest.raises(BackendUnavailable) as err:
        require_tensorrt()
    message = str(err.value)
    assert "\n" not in message and ("pip install" in message or "GPU" in message)


# ------------------------------------------------------------------------------------------------- GPU

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available() or not _has_tensorrt(),
                    reason="needs a CUDA GPU and tensorrt (pip install '.[tensorrt]')")
def test_engine_build_and_run(tiny_bert_dir, tmp_path):
    """The build on a real GPU: a profile smaller than the parity set (8 < 32 sentences), the settings it records,
    a runner that refuses shapes outside the profile and serialises threads, an engine of another build refused."""
    from runtime import Classifier
    from runtime.export import ExportOptions, export

    out = tmp_path / "out"
    manifest = export(tiny_bert_dir, out, ExportOptions(tensorrt=True, max_batch=8, max_seq=64), log=lambda *_: None)
    assert manifest["parity"]["tensorrt"]["status"] == "passed" and manifest["parity"]["tensorrt"]["n"] == 32
    settings = json.loads((out / "model_fp16.engine.json").read_text())
    assert settings["shapes"]["max"] == [8, 64] and (out / "timing.cache").is_file()
    assert settings["inputs"] == list(onnx_profile(out / "model.onnx", 8, 64))
    clf = Classifier.load(out, backend="tensorrt", device="cuda")
    assert clf.backend.providers == ["tensorrt"] and len(clf(["a fine film"] * 20)) == 20  # 20 > max batch 8
    with pytest.raises(ValueError, match="outside the engine's optimisation profile"):
        clf.backend({"input_ids": np.ones((9, 4), np.int64), "attention_mask": np.ones((9, 4), np.int64)})
    results = [None] * 4

    def client(i):
        results[i] = clf.logits(["a fine film", "a dull , lifeless mess"] * (i + 1))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, got in enumerate(results):
        np.testing.assert_allclose(got, np.tile(results[0], (i + 1, 1)), atol=1e-2)
    (tmp_path / ENGINE_NAME).write_bytes(b"\x00 not an engine of this TensorRT")
    with pytest.raises(BackendUnavailable, match="rebuild it here"):
        tensorrt_backend(tmp_path / ENGINE_NAME)
