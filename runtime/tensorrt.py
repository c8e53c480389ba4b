"""TensorRT FP16 engines from the exported ONNX graph (TensorRT 10 and 11 Python API), and a runner for them.

The engine is built with one optimisation profile covering batch 1..max_batch and sequence 1..max_seq for
every input, FP16 (TensorRT 10: the FP16 builder flag; TensorRT 11, which removed it: an FP16 graph built
strongly typed), and a timing cache kept beside the engine so rebuilding (another profile, a
new model of the same shape) skips most tactic timing. The build settings are saved as JSON next to the
engine: an engine only runs on the GPU model and TensorRT version that built it, so the settings say
exactly what to rebuild with. The alternative route, ONNX Runtime's TensorRT execution provider, needs no
separate build: ``runtime.backends.onnxruntime_backend(path, device="cuda", tensorrt_ep=True)``.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ernie_common.io import write_atomic
from runtime.errors import TENSORRT_EXTRA, BackendUnavailable, gpu_available

ENGINE_NAME = "model_fp16.engine"
SETTINGS_NAME = "model_fp16.engine.json"
TIMING_CACHE_NAME = "timing.cache"
# Kept in fp32 when the graph itself is converted to fp16 (TensorRT 11): reductions that overflow or lose
# the small differences they exist to see.
FP32_OPS = ("LayerNormalization", "Softmax")


@dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max shapes of one (batch, sequence) input for an optimisation profile."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]

    def fits(self, shape: tuple) -> bool:
        return len(shape) == 2 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def refusal(self, shape: tuple, engine: Path) -> ValueError:
        """The one-line error for a ``shape`` outside this profile of ``engine``, naming the rebuild that fits it."""
        batch, seq = (tuple(shape) + (0, 0))[:2]
        return ValueError(f"input shape {tuple(shape)} is outside the engine's optimisation profile (batch "
                          f"{self.min[0]}..{self.max[0]}, sequence {self.min[1]}..{self.max[1]}) of {engine}: send "
                          f"smaller batches / truncate (runtime.Classifier does), or rebuild with `python -m "
                          f"runtime.export ... --tensorrt --max-batch {max(batch, self.max[0])} --max-seq "
                          f"{max(seq, self.max[1])}`")


def profile_shapes(max_batch: int, max_seq: int, opt_batch: int | None = None,
                   opt_seq: int | None = None) -> ProfileShapes:
    """Shapes covering batch 1..max_batch and sequence 1..max_seq; opt defaults to the middle of the range
    (TensorRT picks tactics for opt, so a typical serving batch and sentence length are good choices)."""
    if max_batch < 1 or max_seq < 1:
        raise ValueError(f"max_batch and max_seq must be >= 1 (got {max_batch}, {max_seq})")
    opt_batch = opt_batch or max(1, max_batch // 2)
    opt_seq = opt_seq or max(1, max_seq // 2)
    if not (1 <= opt_batch <= max_batch and 1 <= opt_seq <= max_seq):
        raise ValueError(f"opt shape ({opt_batch}, {opt_seq}) is outside (1..{max_batch}, 1..{max_seq})")
    return ProfileShapes((1, 1), (opt_batch, opt_seq), (max_batch, max_seq))


def onnx_profile(onnx_path: str | Path, max_batch: int, max_seq: int, opt_batch: int | None = None,
                 opt_seq: int | None = None) -> dict[str, ProfileShapes]:
    """The optimisation profile of an exported graph: :func:`profile_shapes` for each of its inputs (initialisers
    are not inputs). Raises ValueError, before any engine is built, for an input that is not (batch, sequence)
    or that fixes a dimension the profile varies (a graph exported without dynamic axes)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initialisers = {t.name for t in graph.initializer}
    shapes = profile_shapes(max_batch, max_seq, opt_batch, opt_seq)
    profile = {}
    for value in (v for v in graph.input if v.name not in initialisers):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if len(dims) != 2:
            raise ValueError(f"{onnx_path}: input {value.name!r} has {len(dims)} dimensions, not (batch, sequence)")
        for size, low, high, what in zip(dims, shapes.min, shapes.max, ("batch", "sequence")):
            if size is not None and not low == size == high:
                raise ValueError(f"{onnx_path}: input {value.name!r} has a fixed {what} of {size} but the profile spans "
                                 f"{low}..{high}: export with dynamic axes (python -m runtime.export does)")
        profile[value.name] = shapes
    return profile


def fp16_graph(model):
    """``model`` (an FP32 ``onnx.ModelProto``) converted to FP16 for a strongly typed TensorRT network: weights
    and activations in FP16 except :data:`FP32_OPS` (and ONNX Runtime's own block list), with the int64 inputs
    and the fp32 logits kept as they are, so callers feed and read the same tensors as the FP32 graph."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS])


@dataclass
class BuildSettings:
    """Everything the engine was built with; saved as ``model_fp16.engine.json``."""

    onnx: str
    inputs: list[str]
    shapes: ProfileShapes
    precision: str = ""
    fp16: bool = True
    workspace_mb: int = 4096
    tensorrt_version: str = ""
    gpu: str = ""
    timing_cache: str = TIMING_CACHE_NAME
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def require_tensorrt():
    """Import tensorrt and check for a CUDA GPU, or raise BackendUnavailable with the one-line fix."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"tensorrt is not installed: {TENSORRT_EXTRA}") from None
    if not gpu_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU and a CUDA build of torch; none is visible here "
                                 "(use the onnxruntime back end on CPU)")
    return trt


def _precision_setup(trt, onnx_path: Path, scratch: Path) -> tuple[int, list, Path, str]:
    """How to get FP16 kernels from this TensorRT: (network creation flags, builder flags, ONNX file to parse,
    a description for the settings file).

    TensorRT 10 builds the FP32 graph with ``BuilderFlag.FP16`` (weak typing: it may pick FP16 kernels).
    TensorRT 11 removed that flag and builds strongly typed networks only, so the precision must be in the
    graph itself: the FP32 graph is converted to FP16 (:func:`fp16_graph`) into ``scratch`` and built strongly
    typed.
    """
    if hasattr(trt.BuilderFlag, "FP16"):
        return 0, [trt.BuilderFlag.FP16], onnx_path, "fp16 kernels allowed (BuilderFlag.FP16, weakly typed network)"
    import onnx

    converted = scratch / "model_fp16_strongly_typed.onnx"
    onnx.save(fp16_graph(onnx.load(str(onnx_path))), str(converted))
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags, [], converted, f"fp16 graph (strongly typed network; {', '.join(FP32_OPS)} kept in fp32)"


def _parse_onnx(trt, builder, logger, onnx_path: Path, network_flags: int = 0):
    network = builder.create_network(network_flags)  # TensorRT 10+: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def build_engine(onnx_path: str | Path, out_dir: str | Path, max_batch: int = 64, max_seq: int = 128,
                 workspace_mb: int = 4096, opt_batch: int | None = None, opt_seq: int | None = None) -> Path:
    """Build an FP16 engine for ``onnx_path`` into ``out_dir``; returns the engine path.

    Use the plain FP32 ``model.onnx`` (not ORT-optimised graphs: their fused com.microsoft ops are unknown
    to TensorRT, which does its own fusion). Works on TensorRT 10 and 11 (see :func:`_precision_setup`).
    """
    trt = require_tensorrt()
    import torch

    out_dir = Path(out_dir)
    shapes = profile_shapes(max_batch, max_seq, opt_batch, opt_seq)
    by_input = onnx_profile(onnx_path, max_batch, max_seq, opt_batch, opt_seq)  # the same range for every input
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    with tempfile.TemporaryDirectory(prefix="runtime-trt-") as scratch:
        network_flags, builder_flags, graph, precision = _precision_setup(trt, Path(onnx_path), Path(scratch))
        network, _parser = _parse_onnx(trt, builder, logger, graph, network_flags)
        inputs = [network.get_input(i).name for i in range(network.num_inputs)]
        if sorted(inputs) != sorted(by_input):
            raise RuntimeError(f"TensorRT parsed inputs {inputs} from {onnx_path}, which declares {list(by_input)}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        for flag in builder_flags:
            config.set_flag(flag)
        profile = builder.create_optimization_profile()
        for name, span in by_input.items():
            profile.set_shape(name, span.min, span.opt, span.max)
        config.add_optimization_profile(profile)
        cache_path = out_dir / TIMING_CACHE_NAME
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path = out_dir / ENGINE_NAME
    write_atomic(engine_path, lambda f: f.write_bytes(bytes(serialized)))
    write_atomic(cache_path, lambda f: f.write_bytes(bytes(config.get_timing_cache().serialize())))
    settings = BuildSettings(Path(onnx_path).name, list(by_input), shapes, precision=precision, workspace_mb=workspace_mb,
                             tensorrt_version=trt.__version__, gpu=torch.cuda.get_device_name())
    write_atomic(out_dir / SETTINGS_NAME, lambda f: f.write_text(settings.to_json()))
    return engine_path


class EngineRunner:
    """``runner(feed) -> logits`` for one deserialised engine: one execution context, one CUDA stream.

    The context holds per-call state (input shapes, buffer addresses), so calls are serialised with a lock:
    two threads sharing it would otherwise run on each other's shapes and buffers. The engine runs on its own
    stream (not the default one, which would order it after every other kernel of the process); inputs are
    copied, the engine runs and the logits come back on that stream. A shape outside the engine's optimisation
    profile raises ValueError naming the profile (``runtime.Classifier`` caps batch and length to it).
    """

    def __init__(self, trt, engine, path: Path, device: str = "cuda"):
        import torch

        self.path = path
        self.engine = engine
        self.device = torch.device(device)
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream(self.device)
        self._lock = threading.Lock()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self._input_types = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in self.input_names}
        self._output_dtype = torch.float16 if engine.get_tensor_dtype(self.output) == trt.DataType.HALF else torch.float32
        self.profile = ProfileShapes(*(tuple(s) for s in engine.get_tensor_profile_shape(self.input_names[0], 0)))

    @property
    def max_batch(self) -> int:
        return self.profile.max[0]

    @property
    def max_seq(self) -> int:
        return self.profile.max[1]

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        arrays = {n: np.ascontiguousarray(feed[n], dtype=self._input_types[n]) for n in self.input_names}
        for array in arrays.values():
            if not self.profile.fits(array.shape):
                raise self.profile.refusal(array.shape, self.path)
        on_gpu = self.device.type == "cuda"
        with self._lock, (torch.cuda.stream(self.stream) if on_gpu else contextlib.nullcontext()):
            tensors = {n: torch.from_numpy(a).to(self.device) for n, a in arrays.items()}
            for name, tensor in tensors.items():
                if not self.context.set_input_shape(name, tuple(tensor.shape)):
                    raise self.profile.refusal(tuple(tensor.shape), self.path)
                self.context.set_tensor_address(name, tensor.data_ptr())
            out_shape = tuple(self.context.get_tensor_shape(self.output))
            if any(d < 0 for d in out_shape):
                raise RuntimeError(f"TensorRT could not infer the output shape of {self.path} for inputs "
                                   f"{[tuple(t.shape) for t in tensors.values()]}")
            result = torch.empty(out_shape, dtype=self._output_dtype, device=self.device)
            self.context.set_tensor_address(self.output, result.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for {self.path}")
            logits = result.float().cpu()
            self.stream.synchronize()
        return logits.numpy()


def load_engine_runner(engine_path: str | Path, device: str = "cuda") -> EngineRunner:
    """Deserialise an engine; return its runner (``runner.input_names``, ``runner(feed) -> logits``)."""
    trt = require_tensorrt()
    path = Path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: build it with `python -m runtime.export ... --tensorrt`")
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BackendUnavailable(f"{path} was built for another GPU or TensorRT version: rebuild it here "
                                 "with `python -m runtime.export ... --tensorrt`")
    return EngineRunner(trt, engine, path, device)
