"""TensorRT FP16 engines from the exported ONNX graph (TensorRT 10 Python API), and a runner for them.

The engine is built with one optimisation profile covering batch 1..max_batch and sequence 1..max_seq for
every input, FP16 enabled, and a timing cache kept beside the engine so rebuilding (another profile, a
new model of the same shape) skips most tactic timing. The build settings are saved as JSON next to the
engine: an engine only runs on the GPU model and TensorRT version that built it, so the settings say
exactly what to rebuild with. The alternative route, ONNX Runtime's TensorRT execution provider, needs no
separate build: ``runtime.backends.onnxruntime_backend(path, device="cuda", tensorrt_ep=True)``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from runtime.backends import TENSORRT_EXTRA, BackendUnavailable
from runtime.io import write_atomic

ENGINE_NAME = "model_fp16.engine"
SETTINGS_NAME = "model_fp16.engine.json"
TIMING_CACHE_NAME = "timing.cache"


@dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max shapes of one (batch, sequence) input for an optimisation profile."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]


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


@dataclass
class BuildSettings:
    """Everything the engine was built with; saved as ``model_fp16.engine.json``."""

    onnx: str
    inputs: list[str]
    shapes: ProfileShapes
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
    from runtime.backends import gpu_available

    if not gpu_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU and a CUDA build of torch; none is visible here "
                                 "(use the onnxruntime back end on CPU)")
    return trt


def _parse_onnx(trt, builder, logger, onnx_path: Path):
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    return network, parser


def build_engine(onnx_path: str | Path, out_dir: str | Path, max_batch: int = 64, max_seq: int = 128,
                 workspace_mb: int = 4096, opt_batch: int | None = None, opt_seq: int | None = None) -> Path:
    """Build an FP16 engine for ``onnx_path`` into ``out_dir``; returns the engine path.

    Use the plain FP32 ``model.onnx`` (not ORT-optimised graphs: their fused com.microsoft ops are unknown
    to TensorRT, which does its own fusion).
    """
    trt = require_tensorrt()
    import torch

    out_dir = Path(out_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse_onnx(trt, builder, logger, Path(onnx_path))
    shapes = profile_shapes(max_batch, max_seq, opt_batch, opt_seq)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    for name in inputs:
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
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
    settings = BuildSettings(Path(onnx_path).name, inputs, shapes, workspace_mb=workspace_mb,
                             tensorrt_version=trt.__version__, gpu=torch.cuda.get_device_name())
    write_atomic(out_dir / SETTINGS_NAME, lambda f: f.write_text(settings.to_json()))
    return engine_path


def load_engine_runner(engine_path: str | Path, device: str = "cuda") -> tuple[list[str], Callable]:
    """Deserialise an engine; return its input names and ``run(feed) -> logits`` on torch CUDA buffers."""
    trt = require_tensorrt()
    import torch

    path = Path(engine_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: build it with `python -m runtime.export ... --tensorrt`")
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BackendUnavailable(f"{path} was built for another GPU or TensorRT version: rebuild it here "
                                 "with `python -m runtime.export ... --tensorrt`")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    output = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    input_types = {n: trt.nptype(engine.get_tensor_dtype(n)) for n in inputs}
    torch_device = torch.device(device)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        stream = torch.cuda.current_stream(torch_device)
        tensors = {n: torch.from_numpy(np.ascontiguousarray(feed[n], dtype=input_types[n])).to(torch_device)
                   for n in inputs}
        for name, tensor in tensors.items():
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        out_shape = tuple(context.get_tensor_shape(output))
        out_dtype = torch.float16 if engine.get_tensor_dtype(output) == trt.DataType.HALF else torch.float32
        result = torch.empty(out_shape, dtype=out_dtype, device=torch_device)
        context.set_tensor_address(output, result.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {path}")
        stream.synchronize()
        return result.float().cpu().numpy()

    return inputs, run
