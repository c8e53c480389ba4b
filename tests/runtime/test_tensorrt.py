"""TensorRT builder and engine runner: on a fake ``tensorrt`` module here (tests/runtime/fake_tensorrt.py),
and the real thing where a GPU and TensorRT exist (``-m gpu``)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from fake_tensorrt import fake_logits, install, make_fake_tensorrt

from runtime.backends import BackendUnavailable, gpu_available, tensorrt_backend
from runtime.tensorrt import (
    ENGINE_NAME,
    SETTINGS_NAME,
    TIMING_CACHE_NAME,
    build_engine,
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


@pytest.fixture
def fake_trt(monkeypatch):
    """A fake TensorRT 10 and fake CUDA streams (this machine has neither)."""
    return install(monkeypatch, make_fake_tensorrt(10))


def _engine_file(tmp_path, max_batch: int, max_seq: int):
    path = tmp_path / ENGINE_NAME
    path.write_text(json.dumps({"inputs": INPUTS, "max": [max_batch, max_seq]}))
    return path


def _feed(batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1000, 30000, (batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


# ------------------------------------------------------------------------------------------------ runner

def test_runner_refuses_a_shape_outside_the_profile_with_one_line(fake_trt, tmp_path):
    backend = tensorrt_backend(_engine_file(tmp_path, max_batch=4, max_seq=64), device="cpu")
    inside = _feed(4, 64)
    np.testing.assert_array_equal(backend(inside), fake_logits(inside["input_ids"]))
    for batch, seq, fix in ((5, 16, "--max-batch 5"), (2, 65, "--max-seq 65")):
        with pytest.raises(ValueError, match="outside the engine's optimisation profile") as err:
            backend(_feed(batch, seq))
        assert "\n" not in str(err.value) and fix in str(err.value) and "batch 1..4, sequence 1..64" in str(err.value)
    np.testing.assert_array_equal(backend(_feed(1, 3)), fake_logits(_feed(1, 3)["input_ids"]))  # still usable


def test_runner_runs_on_its_own_cuda_stream(fake_trt, tmp_path):
    backend = tensorrt_backend(_engine_file(tmp_path, 8, 32), device="cpu")
    backend(_feed(2, 8))
    backend(_feed(3, 8))
    (context,) = fake_trt.engines[-1].contexts
    (stream,) = fake_trt.streams
    assert context.streams == [stream.cuda_stream] * 2 and stream.cuda_stream != fake_trt.default_stream.cuda_stream
    assert stream.synchronized >= 2


def test_runner_serialises_threads_that_share_its_context(monkeypatch, tmp_path):
    fake = install(monkeypatch, make_fake_tensorrt(10, delay=0.002))
    backend = tensorrt_backend(_engine_file(tmp_path, 8, 32), device="cpu")
    wrong, errors = [], []

    def client(seed: int):
        try:
            for call in range(4):
                feed = _feed(1 + seed % 4, 5 + seed, seed=100 * seed + call)
                if not np.array_equal(backend(feed), fake_logits(feed["input_ids"])):
                    wrong.append((seed, call))
        except Exception as err:  # noqa: BLE001 - a race shows up as any error; report it below
            errors.append(repr(err))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not wrong, (errors[:2], wrong[:4])
    assert max(c.max_in_flight for c in fake.engines[-1].contexts) == 1


def test_engine_of_another_tensorrt_or_gpu_is_one_line(fake_trt, tmp_path):
    path = tmp_path / ENGINE_NAME
    path.write_bytes(b"\x00 not an engine of this TensorRT")
    with pytest.raises(BackendUnavailable, match="rebuild it here") as err:
        tensorrt_backend(path, device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="--tensorrt"):
        tensorrt_backend(tmp_path / "missing.engine", device="cpu")


# ----------------------------------------------------------------------------------------------- builder

def test_builder_on_tensorrt10_sets_fp16_flag_profile_and_timing_cache(fake_trt, tiny_export, tmp_path):
    engine = build_engine(tiny_export / "model.onnx", tmp_path, max_batch=8, max_seq=64)
    network, config = fake_trt.networks[-1], fake_trt.configs[-1]
    assert network.flags == 0 and config.flags == {"fp16"}  # weakly typed, FP16 kernels allowed
    (profile,) = config.profiles
    assert profile.shapes == {name: ((1, 1), (4, 32), (8, 64)) for name in INPUTS}
    assert "FLOAT16" not in network.parsed["initializer_types"]  # TensorRT itself picks fp16 kernels
    settings = json.loads((tmp_path / SETTINGS_NAME).read_text())
    assert settings["shapes"]["max"] == [8, 64] and settings["inputs"] == INPUTS and settings["gpu"] == "Fake GPU"
    assert settings["precision"] == "fp16 kernels allowed (BuilderFlag.FP16, weakly typed network)"
    assert engine == tmp_path / ENGINE_NAME and config.timing_cache_seen == b""
    cache = (tmp_path / TIMING_CACHE_NAME).read_bytes()
    build_engine(tiny_export / "model.onnx", tmp_path, max_batch=8, max_seq=64)  # a rebuild starts from the cache
    assert cache and fake_trt.configs[-1].timing_cache_seen == cache


def test_builder_on_tensorrt11_builds_a_strongly_typed_fp16_graph(monkeypatch, tiny_export, tmp_path):
    fake = install(monkeypatch, make_fake_tensorrt(11))
    build_engine(tiny_export / "model.onnx", tmp_path, max_batch=8, max_seq=64)
    network, config = fake.networks[-1], fake.configs[-1]
    assert network.flags == 1 << fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED and config.flags == set()
    parsed = network.parsed  # the graph TensorRT was given: fp16 weights, the exported int64 in / fp32 out
    assert "FLOAT16" in parsed["initializer_types"]
    assert parsed["input_types"] == ["INT64"] * 3 and parsed["output_types"] == ["FLOAT"]
    assert not list(tmp_path.glob("*.onnx"))  # the converted graph is scratch, not part of the export
    settings = json.loads((tmp_path / SETTINGS_NAME).read_text())
    assert settings["precision"].startswith("fp16 graph (strongly typed network")
    # and the engine computes what the fp32 graph does, within fp16 rounding
    backend = tensorrt_backend(tmp_path / ENGINE_NAME, device="cpu")
    from runtime.backends import onnxruntime_backend

    feed = _feed(3, 12)
    np.testing.assert_allclose(backend(feed), onnxruntime_backend(tiny_export / "model.onnx")(feed), atol=2e-3)


# ---------------------------------------------------------------------------------------- shapes, errors

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
    from runtime import Classifier
    from runtime.export import ExportOptions, export

    manifest = export(tiny_bert_dir, tmp_path / "out", ExportOptions(tensorrt=True, max_batch=8, max_seq=64),
                      log=lambda *_: None)
    assert manifest["parity"]["tensorrt"]["status"] == "passed"
    settings = json.loads((tmp_path / "out" / "model_fp16.engine.json").read_text())
    assert settings["shapes"]["max"] == [8, 64] and (tmp_path / "out" / "timing.cache").is_file()
    clf = Classifier.load(tmp_path / "out", backend="tensorrt", device="cuda")
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
