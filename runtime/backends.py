"""Inference back ends: already-tokenised int64 numpy inputs in, float32 logits out.

Every back end reports what *really* runs (``providers``), not what was asked for: ONNX Runtime silently
falls back to the CPU when a CUDA provider cannot start, so the session's own provider list is the truth.
A back end this machine cannot run raises :class:`BackendUnavailable` with a one-line message naming the fix.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from runtime.errors import GPU_EXTRA, TENSORRT_EXTRA, BackendUnavailable, gpu_available

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Threads:
    """CPU threads one model may use. ``None`` keeps the library's default (ONNX Runtime and torch: one
    intra-op thread per core, ORT's idle threads spinning), which suits one model alone on a machine; a server
    with several workers gives each a share of the cores and turns spinning off, or idle workers' spinning
    threads steal the cores that busy ones need."""

    intra_op: int | None = None
    inter_op: int | None = None
    spinning: bool | None = None

    def ort_config(self) -> dict[str, str]:
        """``SessionOptions.add_session_config_entry`` entries for the spinning setting."""
        if self.spinning is None:
            return {}
        flag = "1" if self.spinning else "0"
        return {"session.intra_op.allow_spinning": flag, "session.inter_op.allow_spinning": flag}


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str
    providers: list[str]
    input_names: list[str]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class _Backend:
    """A named callable: ``run`` receives only the inputs the graph declares, as int64."""

    name: str
    device: str
    providers: list[str]
    input_names: list[str]
    run: Callable[[dict[str, np.ndarray]], np.ndarray] = field(repr=False)
    precision: str = "fp32"
    session: Any = field(default=None, repr=False)
    """The engine's own session object where it has one (ONNX Runtime's ``InferenceSession``)."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        missing = [n for n in self.input_names if n not in inputs and n != "token_type_ids"]
        if missing:
            raise ValueError(f"{self.name} back end needs inputs {missing}: tokenise with the model's tokenizer")
        feed = {n: _token_types(inputs) if n not in inputs else np.asarray(inputs[n], dtype=np.int64)
                for n in self.input_names}
        return np.asarray(self.run(feed), dtype=np.float32)


def _token_types(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return np.zeros_like(np.asarray(inputs["input_ids"], dtype=np.int64))


# --------------------------------------------------------------------------------------------- torch

_TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _torch_model(model_dir_or_model, device: str, precision: str, threads: Threads | None):
    """The model on ``device`` in ``precision``, eval mode, and the input names its forward accepts."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("torch is not installed here (a CPU serving image has none): export the model "
                                 "with `python -m runtime.export` for onnxruntime, or pip install torch") from None
    from transformers import AutoModelForSequenceClassification

    if threads is not None and threads.intra_op:
        torch.set_num_threads(threads.intra_op)
    if precision not in _TORCH_DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {sorted(_TORCH_DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable("torch back end on cuda needs a CUDA GPU and a CUDA build of torch; use device='cpu'")
    dtype = getattr(torch, _TORCH_DTYPES[precision])
    if isinstance(model_dir_or_model, (str, Path)):
        model = AutoModelForSequenceClassification.from_pretrained(model_dir_or_model, dtype=dtype)
    else:
        model = model_dir_or_model.to(dtype)
    model = model.to(device).eval()
    accepted = inspect.signature(model.forward).parameters
    return model, [n for n in INPUT_NAMES if n in accepted]


def torch_backend(model_dir_or_model, device: str = "cpu", precision: str = "fp32",
                  threads: Threads | None = None) -> _Backend:
    """A PyTorch ``AutoModelForSequenceClassification`` (a directory or an already-built model).

    ``threads.intra_op`` sets ``torch.set_num_threads``, which is process-wide (torch has no per-model pool).
    """
    import torch

    model, names = _torch_model(model_dir_or_model, device, precision, threads)

    @torch.inference_mode()
    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
        return model(**tensors).logits.float().cpu().numpy()

    return _Backend("torch", device, [f"torch:{torch.device(device).type}"], names, run, precision)


def cuda_graphs_backend(model_dir_or_model, device: str = "cuda", precision: str = "fp32",
                        threads: Threads | None = None) -> _Backend:
    """The PyTorch model on a CUDA GPU, each input shape's forward captured once as a CUDA graph and replayed
    (:class:`runtime.cuda_graphs.CudaGraphRunner`): the small student stops waiting on kernel launches.
    ``threads`` is accepted for a uniform signature. Raises :class:`BackendUnavailable` where torch sees no GPU.
    """
    if not str(device).startswith("cuda"):
        raise ValueError(f"the cuda-graphs back end runs on a GPU, not {device}: pass device='cuda', "
                         "or use the torch back end on the CPU")
    if not gpu_available():
        raise BackendUnavailable("the cuda-graphs back end needs a CUDA GPU and a CUDA build of torch, and torch "
                                 "sees none here: use backend 'torch' or 'onnxruntime' (or 'auto') on this machine")
    from runtime.cuda_graphs import CudaGraphRunner

    model, names = _torch_model(model_dir_or_model, device, precision, threads)
    return _Backend("cuda-graphs", device, ["torch:cuda", "cuda-graphs"], names,
                    CudaGraphRunner(model, device, names), precision)


# --------------------------------------------------------------------------------------- onnxruntime

def _ort_providers(device: str, tensorrt_ep: bool, trt_cache_dir: str | Path | None, onnx_path: Path,
                   trt_max_batch: int = 64, trt_max_seq: int = 128) -> list:
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)})
    if not tensorrt_ep:
        return [cuda, "CPUExecutionProvider"]
    return [("TensorrtExecutionProvider", _tensorrt_ep_options(cuda[1]["device_id"], onnx_path, trt_cache_dir,
                                                               trt_max_batch, trt_max_seq)),
            cuda, "CPUExecutionProvider"]


def _tensorrt_ep_options(device_id: int, onnx_path: Path, cache_dir: str | Path | None, max_batch: int,
                         max_seq: int) -> dict:
    """ORT's TensorRT EP options: FP16, one explicit profile (batch 1..max_batch, sequence 1..max_seq) for every
    graph input, and an engine + timing cache (default: ``trt_cache/`` beside the model). Without the profile the
    EP builds an engine for the first shape it sees and rebuilds on every larger one, at request time; without
    the cache every process start rebuilds it."""
    from runtime.tensorrt import onnx_profile

    by_input = onnx_profile(onnx_path, max_batch, max_seq)
    cache = str(cache_dir if cache_dir is not None else onnx_path.parent / "trt_cache")
    profile = {f"trt_profile_{kind}_shapes": ",".join(f"{n}:{getattr(s, kind)[0]}x{getattr(s, kind)[1]}"
                                                      for n, s in by_input.items())
               for kind in ("min", "opt", "max")}
    return {"device_id": device_id, "trt_fp16_enable": True, **profile,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}


def onnxruntime_backend(onnx_path, device: str = "cpu", precision: str | None = None, *,
                        tensorrt_ep: bool = False, trt_cache_dir: str | Path | None = None,
                        trt_max_batch: int = 64, trt_max_seq: int = 128,
                        intra_op_threads: int | None = None,
                        session_config: dict[str, str] | None = None, threads: Threads | None = None) -> _Backend:
    """An ONNX Runtime session: CPUExecutionProvider on CPU, CUDA (optionally TensorRT EP first) on cuda.

    ``tensorrt_ep``: TensorRT EP first, with an optimisation profile of batch 1..``trt_max_batch`` and
    sequence 1..``trt_max_seq`` and engines cached in ``trt_cache_dir`` (default ``trt_cache/`` beside the model).
    Raises :class:`BackendUnavailable` when the requested GPU provider is not in this onnxruntime build or
    the session did not really start it (ORT would otherwise run on the CPU without saying so).
    ``session_config`` entries go to ``SessionOptions.add_session_config_entry`` (e.g. the bench turns
    ``session.intra_op.allow_spinning`` off so idle workers of one model do not slow the other).
    ``threads`` sets intra-op and inter-op thread counts and spinning (``intra_op_threads`` and
    ``session_config`` win where both are given).
    """
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `python -m runtime.export MODEL_DIR --out DIR` first")
    providers = _ort_providers(device, tensorrt_ep, trt_cache_dir, path, trt_max_batch, trt_max_seq)
    wanted = [p[0] if isinstance(p, tuple) else p for p in providers]
    available = set(ort.get_available_providers())
    lacking = [p for p in wanted if p not in available]
    if lacking:
        fix = TENSORRT_EXTRA if "TensorrtExecutionProvider" in lacking else GPU_EXTRA
        raise BackendUnavailable(f"onnxruntime here lacks {', '.join(lacking)}: {fix}")
    threads = threads or Threads()
    options = ort.SessionOptions()
    if intra_op_threads or threads.intra_op:
        options.intra_op_num_threads = intra_op_threads or threads.intra_op
    if threads.inter_op:
        options.inter_op_num_threads = threads.inter_op
    for key, value in {**threads.ort_config(), **(session_config or {})}.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), options, providers=providers)
    actual = session.get_providers()
    if wanted[0] not in actual:
        raise BackendUnavailable(f"onnxruntime could not start {wanted[0]} (session runs on {actual}): "
                                 "check the CUDA/cuDNN/TensorRT libraries match this onnxruntime-gpu build")
    names = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([output], feed)[0]

    return _Backend("onnxruntime", device, actual, names, run, precision or _onnx_precision(session), session)


def _onnx_precision(session) -> str:
    return "fp16" if "float16" in session.get_outputs()[0].type else "fp32"


# ------------------------------------------------------------------------------------------ tensorrt

def tensorrt_backend(engine_path, device: str = "cuda", threads: Threads | None = None) -> _Backend:
    """A serialised TensorRT engine (built by :mod:`runtime.tensorrt`); needs tensorrt and a CUDA GPU.
    ``threads`` is accepted for a uniform signature: the engine runs on the GPU."""
    from runtime.tensorrt import load_engine_runner

    runner = load_engine_runner(engine_path, device)
    return _Backend("tensorrt", device, ["tensorrt"], runner.input_names, runner, "fp16")


BACKENDS: dict[str, Callable[..., _Backend]] = {
    "torch": torch_backend,
    "onnxruntime": onnxruntime_backend,
    "tensorrt": tensorrt_backend,
    "cuda-graphs": cuda_graphs_backend,
}
# back ends that run the PyTorch weights of an HF directory (the others run a runtime.export directory)
TORCH_BACKENDS = ("torch", "cuda-graphs")

