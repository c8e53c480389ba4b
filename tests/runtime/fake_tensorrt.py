"""A stand-in for the ``tensorrt`` module, so the builder and the engine runner are tested without a GPU.

It mimics the TensorRT 10 Python API calls ``runtime.tensorrt`` makes, and the behaviour that matters:
``set_input_shape`` returns False for a shape outside the optimisation profile and the output shape then
has a -1 dimension; ``execute_async_v3`` reads the inputs from and writes the logits to the raw addresses
it was given (host memory here: the tests run the runner with ``device="cpu"``). ``version=11`` drops
``BuilderFlag.FP16``, as TensorRT 11 did (strongly typed networks only).
"""
from __future__ import annotations

import ctypes
import json
import threading
import time
import types
from enum import Enum

import numpy as np


class TensorIOMode(Enum):
    INPUT = 0
    OUTPUT = 1


class DataType(Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 7


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64}


def fake_logits(input_ids: np.ndarray) -> np.ndarray:
    """What the fake engine computes: per row, (sum of ids mod 997, row length)."""
    return np.stack([input_ids.sum(axis=1) % 997, np.full(len(input_ids), input_ids.shape[1])], 1).astype(np.float32)


class FakeContext:
    """One execution context: shapes and addresses are per-context state, as in TensorRT."""

    def __init__(self, engine: "FakeEngine"):
        self.engine = engine
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.streams: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._count = threading.Lock()

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        ok = len(shape) == 2 and all(lo <= s <= hi for lo, s, hi in zip(low, shape, high))
        self.shapes[name] = tuple(shape) if ok else (-1, -1)
        return ok

    def get_tensor_shape(self, name: str) -> tuple:
        batch = {s[0] for s in self.shapes.values()}
        if len(batch) != 1 or -1 in batch:
            return (-1, self.engine.num_labels)
        return (batch.pop(), self.engine.num_labels)

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        time.sleep(self.engine.delay)  # widens the window in which another thread could interleave
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        with self._count:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.streams.append(stream_handle)
            time.sleep(self.engine.delay)
            batch, seq = self.shapes["input_ids"]
            feed = {name: np.ctypeslib.as_array((ctypes.c_int64 * (batch * seq)).from_address(self.addresses[name]))
                    .reshape(batch, seq).copy() for name in self.engine.inputs}
            logits = self.engine.compute(feed)
            out = np.ctypeslib.as_array((ctypes.c_float * logits.size).from_address(self.addresses["logits"]))
            out[:] = logits.ravel()
            return True
        finally:
            with self._count:
                self.in_flight -= 1


class FakeEngine:
    """An engine with int64 inputs, float32 ``logits`` and one profile (1..max_batch, 1..max_seq).

    Built by the fake builder it holds the parsed ONNX graph and computes real logits with an ONNX Runtime
    CPU session; written by hand (no graph) it computes :func:`fake_logits`.
    """

    def __init__(self, spec: dict, onnx_bytes: bytes | None = None, delay: float = 0.0):
        self.inputs = spec["inputs"]
        self.max_batch, self.max_seq = spec["max"]
        self.delay = delay
        self.contexts: list[FakeContext] = []
        self._names = [*self.inputs, "logits"]
        self.session = None
        if onnx_bytes is not None:
            import onnxruntime

            self.session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.num_labels = self.session.get_outputs()[0].shape[1] if self.session else 2

    def compute(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.session is None:
            return fake_logits(feed["input_ids"])
        return self.session.run(None, feed)[0].astype(np.float32)

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    def get_tensor_name(self, i: int) -> str:
        return self._names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.OUTPUT if name == "logits" else TensorIOMode.INPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT if name == "logits" else DataType.INT64

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple]:
        return [(1, 1), (max(1, self.max_batch // 2), max(1, self.max_seq // 2)), (self.max_batch, self.max_seq)]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


# ----------------------------------------------------------------------------------------------- builder

class FakeNetwork:
    def __init__(self, flags: int):
        self.flags = flags
        self.input_names: list[str] = []
        self.onnx_bytes: bytes | None = None
        self.parsed: dict = {}

    @property
    def num_inputs(self) -> int:
        return len(self.input_names)

    def get_input(self, i: int):
        return types.SimpleNamespace(name=self.input_names[i])


class FakeParser:
    def __init__(self, network: FakeNetwork, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        import onnx

        model = onnx.load(path)
        graph = model.graph
        self.network.input_names = [i.name for i in graph.input]
        self.network.onnx_bytes = model.SerializeToString()
        self.network.parsed = {
            "path": path,
            "initializer_types": {onnx.TensorProto.DataType.Name(t.data_type) for t in graph.initializer},
            "input_types": [onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type) for i in graph.input],
            "output_types": [onnx.TensorProto.DataType.Name(o.type.tensor_type.elem_type) for o in graph.output],
        }
        return True

    def get_error(self, i: int) -> str:
        return ""


class FakeProfile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"


class FakeConfig:
    def __init__(self):
        self.flags: set = set()
        self.profiles: list[FakeProfile] = []
        self.pool_limits: dict = {}
        self.timing_cache_seen: bytes | None = None
        self._cache = None

    def set_memory_pool_limit(self, pool, size):
        self.pool_limits[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes):
        self.timing_cache_seen = bytes(data)
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self._cache = cache
        return True

    def get_timing_cache(self):
        return self._cache


class FakeBuilder:
    def __init__(self, module, logger):
        self.module = module

    def create_network(self, flags: int = 0) -> FakeNetwork:
        self.module.networks.append(FakeNetwork(flags))
        return self.module.networks[-1]

    def create_builder_config(self) -> FakeConfig:
        self.module.configs.append(FakeConfig())
        return self.module.configs[-1]

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
        (profile,) = config.profiles
        key = f"model-{len(self.module.models)}"
        self.module.models[key] = network.onnx_bytes
        spec = {"inputs": network.input_names, "max": list(profile.shapes[network.input_names[0]][2]), "model": key}
        return json.dumps(spec).encode()


def make_fake_tensorrt(version: int = 10, delay: float = 0.0) -> types.SimpleNamespace:
    """A fake ``tensorrt`` module; ``.networks``/``.configs`` record what the builder was asked for."""
    module = types.SimpleNamespace(__version__=f"{version}.0.0", networks=[], configs=[], engines=[], models={})
    module.TensorIOMode = TensorIOMode
    module.DataType = DataType
    module.nptype = lambda dtype: _NP[dtype]
    module.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    module.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    module.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    flags = {"TF32": "tf32"} if version >= 11 else {"FP16": "fp16", "TF32": "tf32"}
    module.BuilderFlag = types.SimpleNamespace(**flags)
    module.Builder = lambda logger: FakeBuilder(module, logger)
    module.OnnxParser = FakeParser

    def deserialize(data: bytes):
        try:
            spec = json.loads(bytes(data))
        except ValueError:
            return None  # TensorRT returns None for an engine of another version/GPU
        engine = FakeEngine(spec, module.models.get(spec.get("model")), delay)
        module.engines.append(engine)
        return engine

    module.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=deserialize)
    return module


class FakeStream:
    """Stands in for ``torch.cuda.Stream``: a handle and a synchronize()."""

    def __init__(self, handle: int):
        self.cuda_stream = handle
        self.synchronized = 0

    def synchronize(self):
        self.synchronized += 1


def install(monkeypatch, module):
    """Make ``runtime.tensorrt`` use ``module`` and fake CUDA streams/device name (this machine has no GPU);
    ``module.streams`` collects the streams the runner asked for, ``module.default_stream`` is torch's.
    The fake engine reads and writes host memory, so every TensorRT back end is opened with device='cpu'."""
    import torch

    from runtime import backends

    real_backend = backends.tensorrt_backend

    def host_backend(engine_path, device="cuda", **kwargs):
        return real_backend(engine_path, device="cpu", **kwargs)

    monkeypatch.setattr(backends, "tensorrt_backend", host_backend)
    monkeypatch.setitem(backends.BACKENDS, "tensorrt", host_backend)

    module.default_stream, module.streams = FakeStream(0), []

    def new_stream(device=None, **_):
        module.streams.append(FakeStream(100 + len(module.streams)))
        return module.streams[-1]

    monkeypatch.setattr("runtime.tensorrt.require_tensorrt", lambda: module)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: module.default_stream)
    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    return module
