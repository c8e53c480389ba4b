"""`Classifier`: texts (or text pairs) in, labels with scores out, on any back end.

One object for an HF sequence-classification directory or a `runtime.export` directory, so a caller (the
BentoML service, the benchmark) never cares which engine runs. It tokenises a call's texts once (the fast
tokenizer truncates to the model's maximum length, pads and flags what it cut), groups them by length so a
batch pads little, runs the groups and returns the answers in input order.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from runtime.backends import BACKENDS, TORCH_BACKENDS, Backend, Threads
from runtime.encoding import Encoder, is_blank
from runtime.errors import BackendUnavailable, ModelDirError, gpu_available

MANIFEST = "manifest.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "sentencepiece.bpe.model")
PAIR_TASKS = {"mrpc", "stsb", "sts-b", "qqp", "mnli", "qnli", "rte", "wnli"}
SINGLE_TASKS = {"sst2", "sst-2", "cola"}
# auto: the fastest variant that keeps the answers (int8 only when asked: it is lossy).
AUTO_ORDER = {
    "cuda": (("tensorrt", "tensorrt"), ("onnxruntime", "fp16"), ("onnxruntime", "optimized"),
             ("onnxruntime", "fp32"), ("torch", None)),
    "cpu": (("onnxruntime", "optimized"), ("onnxruntime", "fp32"), ("torch", None)),
}
_MAX_SANE_LENGTH = 100_000
# config.json key saying whether the model reads one text or a pair: written by compressor's label_maps,
# read (before the GLUE task name) by is_pair_task. HF's own slot for per-task settings, so any
# from_pretrained(..., task_specific_params=...) call and save_pretrained keep it.
INPUT_KIND_TASK = "text-classification"
INPUT_KINDS = {"single": False, "pair": True}
# length grouping: a longer member joins a group while the padded tokens stay within this factor of the real
# ones, plus what one more model call costs in tokens (measured on 2 CPU cores, ORT, ERNIE-Tiny shape)
PADDING_SLACK = 1.25
CALL_COST_TOKENS = 32
ENCODE_CHUNK = 1024  # texts tokenised and padded together (bounds the padded arrays of a huge call)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_file(model_dir: str | Path) -> Path:
    """The weights file of an HF directory (safetensors preferred)."""
    for name in WEIGHT_FILES:
        if (Path(model_dir) / name).is_file():
            return Path(model_dir) / name
    raise ModelDirError(f"{model_dir} has no {' or '.join(WEIGHT_FILES)}: save the model with save_pretrained()")


def read_model_config(model_dir: str | Path) -> dict:
    """config.json as a dict, checked to describe a classifier (labels, or one output for regression)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(f"{path} is not a directory: pass an HF model directory or a runtime.export directory")
    if not (path / "config.json").is_file():
        raise ModelDirError(f"{path} has no config.json: pass a directory written by save_pretrained() "
                            "or by `python -m runtime.export`")
    config = json.loads((path / "config.json").read_text())
    if config.get("problem_type") != "regression" and not config.get("id2label"):
        raise ModelDirError(f"{path}/config.json has no id2label (no classification head?): fine-tune it "
                            "with labels (id2label/label2id) or num_labels=1, problem_type='regression'")
    return config


def check_tokenizer(model_dir: str | Path) -> None:
    if not any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES):
        raise ModelDirError(f"{model_dir} has no tokenizer files: save the tokenizer beside the model "
                            "(AutoTokenizer.from_pretrained(SOURCE).save_pretrained(DIR))")


def labels_of(config: dict) -> list[str]:
    if config.get("problem_type") == "regression" or not config.get("id2label"):
        return []
    id2label = {int(k): v for k, v in config["id2label"].items()}
    return [id2label[i] for i in sorted(id2label)]


def input_kind(config: dict) -> str | None:
    """``"single"`` or ``"pair"`` as config.json states it (``task_specific_params["text-classification"]
    ["input_kind"]``), else None."""
    params = (config.get("task_specific_params") or {}).get(INPUT_KIND_TASK) or {}
    kind = params.get("input_kind")
    if kind is not None and kind not in INPUT_KINDS:
        raise ModelDirError(f'config.json says input_kind {kind!r}: set task_specific_params["{INPUT_KIND_TASK}"]'
                            f'["input_kind"] to one of {", ".join(INPUT_KINDS)}')
    return kind


def is_pair_task(config: dict) -> bool | None:
    """True for a sentence-pair model, False for a single-text one, None when config.json does not say: the
    explicit input kind first, then a GLUE task name in ``finetuning_task``."""
    kind = input_kind(config)
    if kind is not None:
        return INPUT_KINDS[kind]
    task = (config.get("finetuning_task") or "").lower()
    return True if task in PAIR_TASKS else False if task in SINGLE_TASKS else None


def model_max_length(tokenizer, config: dict, requested: int | None) -> int:
    limits = [config.get("max_position_embeddings") or _MAX_SANE_LENGTH]
    if tokenizer.model_max_length and tokenizer.model_max_length < _MAX_SANE_LENGTH:
        limits.append(tokenizer.model_max_length)
    cap = min(limits)
    if requested is not None and not 1 <= requested <= cap:
        raise ValueError(f"max_length {requested} is outside 1..{cap} (the model's limit)")
    return requested or cap


@dataclass
class Classifier:
    """Texts to labels (or regression values) with one back end; build with :meth:`load`."""

    backend: Backend
    tokenizer: Any = field(repr=False)
    labels: list[str]
    is_regression: bool
    is_pair: bool | None
    max_length: int
    model_hash: str
    path: str
    variant: str | None = None
    batch_size: int = 32
    threads: Threads = field(default_factory=Threads)

    def __post_init__(self) -> None:
        self._encoder = Encoder(self.tokenizer, self.max_length, self.path)

    @classmethod
    def load(cls, path, backend: str = "auto", device: str | None = None, variant: str | None = None,
             max_length: int | None = None, batch_size: int = 32, threads: Threads | None = None) -> "Classifier":
        """Load an HF sequence-classification directory or a `runtime.export` directory.

        ``backend="auto"`` picks the fastest back end that really starts here (see ``AUTO_ORDER``); the
        chosen one is ``self.backend`` and ``info()`` says which providers run. ``batch_size`` is the most
        texts one model call takes; ``threads`` the CPU threads it may use (default: the engine's own).
        ``backend="cuda-graphs"`` runs an HF directory's model on the GPU through captured CUDA graphs
        (``auto`` never picks it: it needs a GPU and keeps one graph per shape bucket in GPU memory).
        """
        from transformers import AutoTokenizer

        root = Path(path)
        config = read_model_config(root)
        check_tokenizer(root)
        threads = threads or Threads()
        devices = [device] if device else ["cuda"] if backend == "cuda-graphs" else \
            ["cuda", "cpu"] if gpu_available() else ["cpu"]
        source = _ExportDir(root) if (root / MANIFEST).is_file() else _HFDir(root)
        engine, chosen = source.start(backend, devices, variant, threads)
        max_length, batch_size = source.limits(chosen, max_length, batch_size)
        tokenizer = AutoTokenizer.from_pretrained(root)
        labels = labels_of(config)
        return cls(engine, tokenizer, labels, not labels, is_pair_task(config),
                   model_max_length(tokenizer, config, max_length), source.model_hash, str(root), chosen,
                   batch_size, threads)

    def __call__(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> list[dict]:
        logits, truncated = self._run(texts)
        if self.is_regression:
            return [{"score": float(v), "truncated": t} for v, t in zip(logits[:, 0], truncated)]
        probs = _softmax(logits)
        best = probs.argmax(axis=1)
        return [{"label": self.labels[i], "score": float(p[i]), "truncated": t}
                for i, p, t in zip(best, probs, truncated)]

    def logits(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> np.ndarray:
        return self._run(texts)[0]

    def info(self) -> dict:
        return {"labels": self.labels, "is_regression": self.is_regression, "is_pair": self.is_pair,
                "backend": self.backend.name, "providers": list(self.backend.providers),
                "device": self.backend.device, "model_hash": self.model_hash, "max_length": self.max_length,
                "path": self.path, "variant": self.variant, "batch_size": self.batch_size,
                "threads": {"intra_op": self.threads.intra_op, "inter_op": self.threads.inter_op,
                            "spinning": self.threads.spinning}}

    def encode(self, texts: Sequence[str] | Sequence[tuple[str, str]]) -> tuple[dict[str, np.ndarray], list[bool]]:
        """Tokenise once: int64 arrays padded to the longest member, truncated to ``max_length``, and which
        texts were cut."""
        return self._encoder(list(texts))

    def _run(self, texts) -> tuple[np.ndarray, list[bool]]:
        texts = _check_texts(texts)
        logits = np.zeros((len(texts), max(len(self.labels), 1)), np.float32)
        flags: list[bool] = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            inputs, truncated = self.encode(texts[start:start + ENCODE_CHUNK])
            lengths = inputs["attention_mask"].sum(axis=1)
            order = np.argsort(lengths, kind="stable")
            for group in length_groups(lengths[order], self.batch_size):
                rows = order[group]
                width = int(lengths[rows].max())
                logits[start + rows] = self.backend(self._encoder.trim({k: v[rows] for k, v in inputs.items()}, width))
            flags += truncated
        return logits, flags


def length_groups(sorted_lengths: np.ndarray, max_rows: int, slack: float = PADDING_SLACK,
                  call_cost: int = CALL_COST_TOKENS) -> list[slice]:
    """Cut ascending lengths into consecutive groups of at most ``max_rows``: a member joins while the group
    padded to it stays within ``slack`` times its real tokens plus ``call_cost`` (what a separate call costs),
    so one long text does not pad a batch of short ones and short texts still share a call."""
    groups, start, real = [], 0, 0
    for i, length in enumerate(sorted_lengths.tolist()):
        rows = i - start + 1
        if rows > max_rows or (rows > 1 and length * rows > slack * (real + length) + call_cost):
            groups.append(slice(start, i))
            start, real = i, 0
        real += length
    if len(sorted_lengths):
        groups.append(slice(start, len(sorted_lengths)))
    return groups


def _check_texts(texts) -> list:
    if isinstance(texts, (str, tuple)) or not isinstance(texts, Sequence):
        raise TypeError("texts must be a list of strings or a list of (text, text_pair) tuples")
    items = list(texts)
    if all(isinstance(t, str) for t in items):
        parts = [(t,) for t in items]
    elif all(isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in items):
        items = parts = [tuple(t) for t in items]
    else:
        raise TypeError("texts must be all strings or all (text, text_pair) tuples of strings, not a mix")
    blank = next((i for i, p in enumerate(parts) if any(is_blank(s) for s in p)), None)
    if blank is not None:
        raise ValueError(f"text {blank} is empty or only whitespace: drop it or give it some words")
    return items


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class _HFDir:
    """An HF directory runs on torch (or torch through CUDA graphs) only (export it for onnxruntime/tensorrt)."""

    def __init__(self, root: Path):
        self.root = root
        self.model_hash = sha256_file(weights_file(root))

    def limits(self, variant: str | None, max_length: int | None, batch_size: int) -> tuple[int | None, int]:
        return max_length, batch_size

    def start(self, backend: str, devices: list[str], variant: str | None,
              threads: Threads | None = None) -> tuple[Backend, str | None]:
        if backend != "auto" and backend not in TORCH_BACKENDS:
            _check_backend_name(backend)
            raise ModelDirError(f"{self.root} is an HF model directory: the {backend} back end needs an export "
                                f"directory, run `python -m runtime.export {self.root} --out EXPORT_DIR`")
        if variant is not None:
            raise ModelDirError(f"variant={variant!r} applies to export directories; {self.root} is an HF directory")
        name = "torch" if backend == "auto" else backend
        return BACKENDS[name](self.root, device=devices[0], threads=threads), None


class _ExportDir:
    """A `runtime.export` directory: its manifest says which file is which variant."""

    def __init__(self, root: Path):
        self.root = root
        self.manifest = json.loads((root / MANIFEST).read_text())
        self.model_hash = self.manifest["source"]["sha256"]
        self.variants: dict[str, str] = self.manifest["variants"]

    def limits(self, variant: str | None, max_length: int | None, batch_size: int) -> tuple[int | None, int]:
        """A TensorRT engine only accepts the shapes of its optimisation profile: cap length and batch."""
        profile = self.manifest.get("tensorrt") if variant == "tensorrt" else None
        if not profile:
            return max_length, batch_size
        return min(max_length or profile["max_seq"], profile["max_seq"]), min(batch_size, profile["max_batch"])

    def start(self, backend: str, devices: list[str], variant: str | None,
              threads: Threads | None = None) -> tuple[Backend, str | None]:
        """Try each (back end, variant) for each device in turn (a GPU first when none was named)."""
        _check_backend_name(backend)
        candidates = [(name, var, device) for device in devices
                      for name, var in _candidates(backend, variant, "cuda" if device.startswith("cuda") else "cpu")]
        failures = []
        for name, var, device in candidates:
            try:
                if variant is None:  # chosen for the caller: only what passed parity at export
                    self._check_parity(var)
                return self._open(name, var, device, threads), var
            except (BackendUnavailable, ModelDirError) as err:
                if len(candidates) == 1:
                    raise
                failures.append(f"{name}/{var} on {device}: {err}")
        raise BackendUnavailable(f"no back end starts for {self.root}: " + "; ".join(failures))

    def _check_parity(self, variant: str | None) -> None:
        """An automatic choice serves only variants whose parity passed at export (an FP16 graph that no GPU
        checked is recorded 'needs a GPU'); a variant the caller names is served as asked."""
        if variant is None or variant not in self.variants:
            return
        status = self.manifest.get("parity", {}).get(variant, {}).get("status")
        if status != "passed":
            raise BackendUnavailable(f"the {variant} variant's parity did not pass at export ({status or 'not recorded'}"
                                     f"), so it is not chosen automatically: pass variant={variant!r} to use it anyway")

    def _open(self, name: str, variant: str | None, device: str, threads: Threads | None = None) -> Backend:
        if name in TORCH_BACKENDS:
            raise ModelDirError(f"{self.root} is an export directory without PyTorch weights: load the source "
                                f"model directory ({self.manifest['source']['path']}) for the {name} back end")
        if variant not in self.variants:
            raise ModelDirError(f"{self.root} has no {variant} variant (has {sorted(self.variants)}): re-export "
                                f"with the matching flag (--fp16, --int8, --tensorrt)")
        return BACKENDS[name](self.root / self.variants[variant], device=device, threads=threads)


def _candidates(backend: str, variant: str | None, kind: str) -> list[tuple[str, str | None]]:
    """(back end, variant) pairs to try in order: AUTO_ORDER for auto, else what was named."""
    if backend in TORCH_BACKENDS:
        return [(backend, None)]
    if backend == "tensorrt":
        return [("tensorrt", "tensorrt")]
    order = [(b, v) for b, v in AUTO_ORDER[kind] if backend == "auto" or b == backend]
    if variant is None:
        return order
    return [(b, v) for b, v in order if v == variant] or [("onnxruntime", variant)]


def _check_backend_name(backend: str) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
