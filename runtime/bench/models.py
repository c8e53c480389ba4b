"""What `runtime.bench` times: a teacher or student, built from a shape or loaded from disk, on one back end.

Speed does not depend on weight values, so ``--teacher-arch``/``--student-arch`` build randomly initialised
``BertForSequenceClassification`` models of a published shape: the speed check needs no download. For the
ONNX Runtime back end those random models are exported once and cached (keyed by shape and tool versions),
so CI pays the export on its first run only.

A :class:`ModelSpec` is plain data so that a fresh process (the memory probe) can rebuild the same runner.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ernie_common.env import library_versions
from ernie_common.io import atomic_dir, write_atomic
from ernie_common.params import count_params, onnx_params
from runtime.backends import BACKENDS, BackendUnavailable
from runtime.bench import BenchError
from runtime.cuda_graphs import padding_mask_3d

ARCHS: dict[str, dict] = {
    # BERT-base (Devlin et al., 2019): 12 layers, hidden 768, 12 heads, FFN 3072; 109.48M parameters.
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # ERNIE-Tiny's student (Su et al., 2021): 4 layers, hidden 312, 12 heads, FFN 1200; 14.35M parameters.
    "ernie-tiny": dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200),
    # Small shapes for CPU rehearsals of the GPU benchmark (benchmarks/gpu_check.py --tiny): BERT-mini (Turc et
    # al., 2019: 4 layers, hidden 256, 4 heads), and a 2-layer student with ERNIE-Tiny's 26-wide heads, so
    # that head padding really pads.
    "bert-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny-26": dict(hidden_size=104, num_hidden_layers=2, num_attention_heads=4, intermediate_size=416),
}
_COMMON_SHAPE = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2, num_labels=2)
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class ModelSpec:
    """One side of the comparison: where the model comes from and how it runs."""

    role: str                 # "teacher" | "student"
    source: str               # a model/export directory, or an ARCHS name when ``arch`` is true
    arch: bool
    backend: str              # a key of runtime.backends.BACKENDS
    device: str = "cpu"
    precision: str = "fp32"
    cuda_graphs: bool = False
    compile_mode: str | None = None  # torch.compile mode for the torch back end (None: not compiled)
    threads: int | None = None
    pad_heads: bool = False   # widen attention heads to a multiple of 8 (exact; helps GPU kernels)
    variant: str | None = None  # which ONNX variant (fp32, optimized, fp16, int8; default: the precision)
    max_batch: int = 64       # TensorRT optimisation profile bounds
    max_seq: int = 128

    @property
    def name(self) -> str:
        return f"{self.source} (random init)" if self.arch else Path(self.source).name

    def to_dict(self) -> dict:
        return asdict(self)


def cache_root() -> Path:
    """Where exported random-shape models live: $COMPRESSOR_BENCH_CACHE, else ~/.cache/compressor-bench."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compressor-bench"
    return Path(os.environ.get("COMPRESSOR_BENCH_CACHE", default))


def arch_config(arch: str, attn_implementation: str = "sdpa"):
    from transformers import BertConfig

    if arch not in ARCHS:
        raise BenchError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
    config = BertConfig(**_COMMON_SHAPE, **ARCHS[arch])
    config._attn_implementation = attn_implementation
    return config


def build_arch_model(arch: str, attn_implementation: str = "sdpa", pad_heads: bool = False):
    """A randomly initialised (seeded) BertForSequenceClassification of the named shape, in eval mode."""
    import torch
    from transformers import BertForSequenceClassification

    config = arch_config(arch, attn_implementation)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    if pad_heads:
        from runtime.headpad import pad_attention_heads

        pad_attention_heads(model)
    return model


def _export_key(arch: str, pad_heads: bool) -> str:
    versions = library_versions(("torch", "transformers", "onnx", "optimum", "optimum-onnx"))
    blob = json.dumps({"shape": {**_COMMON_SHAPE, **ARCHS[arch]}, "pad_heads": pad_heads, **versions},
                      sort_keys=True)
    return f"{arch}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def _export_fp32(model, out_dir: Path) -> Path:
    """optimum's exporter, as runtime.export uses it (legacy exporter; no tokenizer: random shapes have none)."""
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, out_dir, task="text-classification", do_validation=False)
    return out_dir / "model.onnx"


def _derive_variant(fp32: Path, variant: str, arch: str, pad_heads: bool, scratch: Path) -> Path:
    """The optimised / FP16 / INT8 graph of ``fp32``, built with runtime.export's own steps."""
    from runtime.export import optimize_graph, quantize_graph

    config = arch_config(arch)
    builders = {
        "optimized": lambda: optimize_graph(fp32, config, "O2", False, scratch),
        "fp16": lambda: optimize_graph(fp32, config, "O4", True, scratch),
        "int8": lambda: quantize_graph(fp32, scratch),
    }
    if variant not in builders:
        raise BenchError(f"variant {variant!r} of a random-shape model: choose fp32, {', '.join(builders)}")
    return builders[variant]()


def cached_arch_onnx(arch: str, variant: str = "fp32", pad_heads: bool = False) -> Path:
    """The ONNX file of the random ``arch`` model's ``variant``, built on first use into :func:`cache_root`.

    Every file is built in a temporary place beside its cache entry and renamed into place, so a run that
    is interrupted, or two runs racing, never leave a half-written model behind.
    """
    from runtime.export import VARIANT_FILES

    entry = cache_root() / _export_key(arch, pad_heads)
    fp32 = entry / VARIANT_FILES["fp32"]
    if not fp32.is_file():
        with atomic_dir(entry, if_exists="keep") as tmp:  # "keep": another run won the race, its copy is as good
            # eager attention exports the MatMul/Softmax pattern that ONNX Runtime fuses into one Attention op
            _export_fp32(build_arch_model(arch, "eager", pad_heads), tmp)
    target = entry / VARIANT_FILES.get(variant, f"model_{variant}.onnx")
    if not target.is_file():
        with tempfile.TemporaryDirectory(prefix="compressor-bench-") as scratch:
            built = _derive_variant(fp32, variant, arch, pad_heads, Path(scratch))
            write_atomic(target, lambda tmp: shutil.copyfile(built, tmp))
    return target


def vocab_size(spec: ModelSpec) -> int | None:
    """The model's vocabulary size, to keep synthetic token ids in range (None when not recorded)."""
    if spec.arch:
        return _COMMON_SHAPE["vocab_size"]
    config = Path(spec.source) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("vocab_size")
    return None


# ------------------------------------------------------------------------------------------- runners

def load_runner(spec: ModelSpec) -> tuple[Callable[[dict[str, np.ndarray]], np.ndarray], dict]:
    """Build the callable to time and a description of what really runs (providers, parameters)."""
    if spec.precision not in PRECISIONS:
        raise BenchError(f"precision {spec.precision!r} is not one of {', '.join(PRECISIONS)}")
    if spec.backend not in BACKENDS:
        raise BenchError(f"unknown back end {spec.backend!r}: choose one of {', '.join(BACKENDS)}")
    if spec.backend == "cuda-graphs":  # the same as torch with --cuda-graphs
        spec = replace(spec, backend="torch", cuda_graphs=True)
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    loader = _ARCH_LOADERS[spec.backend] if spec.arch else _load_from_dir
    runner, info = loader(spec)
    info.setdefault("providers", list(getattr(runner, "providers", [])))
    return runner, info


def _torch_model(model, spec: ModelSpec):
    if spec.pad_heads:
        from runtime.headpad import pad_attention_heads

        pad_attention_heads(model)
    info = {"parameters": count_params(model)}
    if spec.compile_mode and spec.cuda_graphs:
        raise BenchError("--compile and --cuda-graphs are two engines: pick one (compile mode "
                              "'reduce-overhead' already replays CUDA graphs)")
    if spec.compile_mode:
        return CompiledRunner(model, spec.device, spec.precision, spec.compile_mode), info
    return BACKENDS["cuda-graphs" if spec.cuda_graphs else "torch"](model, spec.device, spec.precision), info


def _torch_arch(spec: ModelSpec):
    return _torch_model(build_arch_model(spec.source), spec)


# Interleaved sessions must not spin: ORT's idle intra-op workers busy-wait after a run, stealing the cores
# from the other model's next run (measured here on 2 cores: student 2.5x slower, ratio 10x instead of 20x).
ORT_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


def _onnxruntime(path: Path, spec: ModelSpec):
    """An ONNX Runtime back end with the bench's thread count and no spinning."""
    backend = BACKENDS["onnxruntime"](path, spec.device, spec.precision, intra_op_threads=spec.threads,
                                      session_config=ORT_SESSION_CONFIG)
    return backend, {"onnx": str(path), "session_config": ORT_SESSION_CONFIG}


def _onnxruntime_arch(spec: ModelSpec):
    return _onnxruntime(cached_arch_onnx(spec.source, spec.variant or spec.precision, spec.pad_heads), spec)


def _tensorrt_arch(spec: ModelSpec):
    from runtime.tensorrt import ENGINE_NAME, build_engine, require_tensorrt

    require_tensorrt()
    if spec.precision != "fp16":
        raise BenchError("the tensorrt back end builds FP16 engines: use --precision fp16")
    onnx_path = cached_arch_onnx(spec.source, "fp32", spec.pad_heads)
    engine_dir = onnx_path.parent / f"tensorrt-b{spec.max_batch}-s{spec.max_seq}"
    engine = engine_dir / ENGINE_NAME
    if not engine.is_file():
        engine_dir.mkdir(exist_ok=True)
        engine = build_engine(onnx_path, engine_dir, max_batch=spec.max_batch, max_seq=spec.max_seq)
    return BACKENDS["tensorrt"](engine, spec.device), {"engine": str(engine), "onnx": str(onnx_path)}


_ARCH_LOADERS = {"torch": _torch_arch, "onnxruntime": _onnxruntime_arch, "tensorrt": _tensorrt_arch}


def _load_from_dir(spec: ModelSpec):
    """An HF model directory (torch) or a runtime.export directory (through runtime.Classifier)."""
    from runtime.classifier import MANIFEST, Classifier, read_model_config

    source = Path(spec.source)
    if not source.is_dir():
        raise BenchError(f"{source} is not a directory: pass a model/export directory, "
                              f"or use --{spec.role}-arch {'|'.join(ARCHS)}")
    read_model_config(source)
    if spec.backend == "torch" and not (source / MANIFEST).is_file():
        # Classifier loads HF dirs in fp32 only; fp16/CUDA graphs/head padding need the model object
        from transformers import AutoModelForSequenceClassification

        return _torch_model(AutoModelForSequenceClassification.from_pretrained(source).eval(), spec)
    variant = spec.variant or ("tensorrt" if spec.backend == "tensorrt" else spec.precision)
    if spec.backend == "onnxruntime" and (source / MANIFEST).is_file():
        return _onnxruntime(_export_variant(source, variant), spec)
    # batch_size: the largest batch the bench sends, which Classifier caps to a TensorRT engine's profile
    clf = Classifier.load(source, backend=spec.backend, device=spec.device, variant=variant,
                          batch_size=spec.max_batch)
    info = {"model_hash": clf.model_hash, "variant": clf.variant}
    if clf.variant == "tensorrt":
        return ProfileCapped(clf.backend, clf.batch_size, clf.max_length), {**info, "chunk": clf.batch_size}
    return clf.backend, info


class ProfileCapped:
    """An engine with a fixed optimisation profile, driven the way ``runtime.Classifier`` drives it: a batch
    larger than the profile runs in chunks the engine accepts; a sequence longer than the profile is an error
    (the Classifier would truncate it, which would time a shorter workload than the one asked for)."""

    def __init__(self, backend, max_batch: int, max_seq: int):
        self.backend, self.max_batch, self.max_seq = backend, max_batch, max_seq
        self.providers = list(backend.providers)
        self.input_names = list(backend.input_names)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        rows, seq = inputs["input_ids"].shape
        if seq > self.max_seq:
            raise BenchError(f"sequence {seq} is longer than the TensorRT engine's profile allows ({self.max_seq}): "
                                  f"bench with --seq up to {self.max_seq}, or re-export with --tensorrt --max-seq {seq}")
        return np.concatenate([self.backend({k: v[i:i + self.max_batch] for k, v in inputs.items()})
                               for i in range(0, rows, self.max_batch)])


def _export_variant(export_dir: Path, variant: str) -> Path:
    """The ONNX file of ``variant`` in a runtime.export directory (opened directly, not through Classifier,
    so that the session gets the bench's thread settings)."""
    from runtime.classifier import MANIFEST

    variants = json.loads((export_dir / MANIFEST).read_text()).get("variants", {})
    if variant not in variants:
        raise BenchError(f"{export_dir} has no {variant!r} variant (has {', '.join(sorted(variants))}): "
                              "pass --variant NAME or re-export with it")
    return export_dir / variants[variant]


def parameter_count(spec: ModelSpec, info: dict) -> int | None:
    """Parameters of the model behind ``spec`` (kept out of :func:`load_runner`, which the memory probe runs:
    reading an ONNX file's initialisers would count its size in the model's memory)."""
    if "parameters" in info:
        return info["parameters"]
    if spec.arch:
        import torch
        from transformers import BertForSequenceClassification

        with torch.device("meta"):
            return count_params(BertForSequenceClassification(arch_config(spec.source)))
    if "onnx" in info:
        return onnx_params(info["onnx"])
    return None


class CompiledRunner:
    """A torch model through ``torch.compile`` (inductor), one specialised graph per input shape.

    ``mode='reduce-overhead'`` also replays each shape's kernels as a CUDA graph on a GPU, which the small
    student needs (it is launch-bound); ``'max-autotune'`` adds kernel autotuning (minutes per shape).
    Compilation happens on the first call of each shape, so time only after warm-up rounds.
    """

    name = "torch"
    MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

    def __init__(self, model, device: str = "cpu", precision: str = "fp32", mode: str = "reduce-overhead"):
        import torch

        if mode not in self.MODES:
            raise BenchError(f"compile mode {mode!r} is not one of {', '.join(self.MODES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable("torch.compile on cuda needs a CUDA GPU; use --device cpu")
        dtypes = {"fp32": torch.float32, "fp16": torch.float16}
        if precision not in dtypes:
            raise BenchError(f"torch.compile runs fp32 or fp16 here, not {precision}")
        # every (model, shape) is one cache entry of the same code object: room for a whole grid of both models
        dynamo = torch._dynamo.config
        key = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.6
        setattr(dynamo, key, max(getattr(dynamo, key), 64))
        self.device = device
        self.precision = precision
        self.model = model.to(device=device, dtype=dtypes[precision]).eval()
        self.providers = [f"torch:{torch.device(device).type}", f"torch.compile:{mode}"]
        self.input_names = ["input_ids", "attention_mask", "token_type_ids"]
        self._compiled = torch.compile(self._forward, mode=mode, dynamic=False)

    def _forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=padding_mask_3d(attention_mask),
                          token_type_ids=token_type_ids).logits

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        inputs = dict(inputs)
        inputs.setdefault("token_type_ids", np.zeros_like(inputs["input_ids"]))
        with torch.inference_mode():
            tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self.input_names}
            return self._compiled(**tensors).float().cpu().numpy()
