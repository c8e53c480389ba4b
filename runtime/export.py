"""`python -m runtime.export MODEL_DIR --out EXPORT_DIR`: an HF classifier to ONNX, ORT-optimised, FP16, INT8
and TensorRT variants, each checked against the PyTorch model on real sentences.

The export directory holds the variants, the tokenizer and config (with ``id2label``) and ``manifest.json``
(what was built from what, hashes, versions, fused-node counts, parity). It is loadable by
``runtime.Classifier`` and by ``optimum.onnxruntime.ORTModelForSequenceClassification`` (``model.onnx``, or
``file_name=`` another variant). Nothing is written at EXPORT_DIR until every variant has passed parity: the
directory is built under a temporary name and renamed.

Why the legacy exporter and eager attention: ONNX Runtime's BERT fusion pattern-matches the graph the
TorchScript exporter produces from the eager attention code; an SDPA or dynamo graph does not fuse.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ernie_common.env import library_versions
from ernie_common.errors import UserError, cli
from ernie_common.io import atomic_dir
from ernie_common.options import add_options
from ernie_common.tables import Examples, TableError, read_examples
from runtime import backends
from runtime.backends import BackendUnavailable, onnxruntime_backend, torch_backend
from runtime.classifier import (
    MANIFEST,
    ModelDirError,
    check_tokenizer,
    labels_of,
    read_model_config,
    sha256_file,
    weights_file,
)
from runtime.encoding import Encoder

OptimizeLevel = Literal["O1", "O2", "O3", "O4"]
OPTIMIZE_LEVELS = get_args(OptimizeLevel)
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")
VERSIONED = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "onnxruntime-gpu",
             "tensorrt")
VARIANT_FILES = {"fp32": "model.onnx", "optimized": "model_optimized.onnx", "fp16": "model_fp16.onnx",
                 "int8": "model_int8.onnx", "tensorrt": "model_fp16.engine"}
PURPOSE = {
    "fp32": "plain ONNX export (dynamic batch/sequence); portable to any ONNX runtime and the TensorRT builder",
    "optimized": "ONNX Runtime fused graph (Attention, SkipLayerNormalization, Gelu...), FP32: CPU or GPU",
    "fp16": "ONNX Runtime fused graph in FP16 with FP32 inputs/outputs: GPU (CUDA EP)",
    "int8": "dynamic INT8 quantisation (MatMul weights) of model.onnx: CPU",
    "tensorrt": "TensorRT FP16 engine: only the GPU model and TensorRT version that built it",
}
HEAD_PAD_ATOL = 1e-5
PARITY_BATCH = 32
# Real English sentences (review-style, as SST-2) used when no --parity-data is given.
BUILTIN_SENTENCES = (
    "The film is a delight from start to finish, funny and warm without ever being sentimental.",
    "I walked out after forty minutes; the plot made no sense and the acting was wooden.",
    "A quiet, patient drama that rewards anyone willing to sit with its silences.",
    "The special effects are impressive, but the story is thin and predictable.",
    "It is the kind of movie you forget before you reach the parking lot.",
    "Her performance is fearless, and the script gives her plenty to work with.",
    "Too long, too loud and far too pleased with itself.",
    "An intelligent thriller that never talks down to its audience.",
    "The jokes land about half the time, which is better than most comedies this year.",
    "Dull.",
    "Beautifully shot, terribly written.",
    "I laughed, I cried, and I would gladly watch it again tomorrow.",
    "The director seems to have no idea what kind of film he wanted to make.",
    "A charming cast cannot rescue a screenplay this lazy.",
    "Every scene feels carefully crafted, yet the whole thing breathes and surprises.",
    "What starts as a promising mystery collapses into a series of clichés.",
    "The soundtrack alone is worth the price of admission.",
    "Nothing about this sequel justifies its existence.",
    "It's a small film with a big heart and a sharp sense of humour.",
    "The pacing drags badly in the middle, but the final act is genuinely moving.",
    "A tedious, joyless exercise in style over substance.",
    "One of the most original animated features in years.",
    "The dialogue is so stilted that the actors seem embarrassed to say it.",
    "Smart, tender and often very funny, it is a coming-of-age story done right.",
    "By the end I no longer cared what happened to any of these people.",
    "The documentary raises hard questions and has the courage to leave some unanswered.",
    "Predictable from the first frame, but the leads have real chemistry.",
    "A mess of a movie, noisy, incoherent and completely forgettable.",
    "The performances are uniformly excellent, especially the young lead.",
    "If you enjoy watching paint dry, this is the film for you.",
    "Its ambition outstrips its execution, but I admired it all the same.",
    "An absolute triumph of storytelling.",
)


class ExportError(UserError):
    """The export cannot go on (a tool failed, or a variant failed parity); the message says why and what to do."""


def _option(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ExportOptions:
    """What to build. The CLI's flags are generated from these fields (``--max-batch`` for ``max_batch``, with its
    default and help), so each is stated here once."""

    optimize: OptimizeLevel | None = _option(
        "O2", "ORTOptimizer level for model_optimized.onnx (O4 = O3 + an fp16 variant)")
    fp16: bool = _option(False, "also build model_fp16.onnx (ORT mixed precision, GPU)")
    int8: bool = _option(False, "also build model_int8.onnx (dynamic quantisation, CPU)")
    tensorrt: bool = _option(False, "also build a TensorRT FP16 engine (needs GPU + tensorrt)")
    max_batch: int = _option(64, "TensorRT profile: largest batch")
    max_seq: int = _option(128, "parity truncation and TensorRT profile: longest sequence")
    pad_heads: bool = _option(False, "pad attention heads to a multiple of 8 (exact)")
    opset: int | None = _option(None, "ONNX opset (default: optimum's for the model)")
    parity_data: Path | Examples | None = _option(
        None, "GLUE TSV of real sentences for parity (e.g. ../shared/data/glue/SST-2/dev.tsv; default: built-in "
              "review sentences; from Python also rows already in memory: Examples with a source)")
    parity_limit: int = _option(512, "sentences of --parity-data to use")
    min_agreement: float = _option(0.995, "label agreement floor for fp32/fp16")
    int8_min_agreement: float = _option(0.95, "label agreement floor for int8 (the real MiniLM measures 95.5% on "
                                              "SST-2 dev)")
    regression_atol: dict = field(default_factory=lambda: {"fp32": 1e-3, "optimized": 1e-2, "fp16": 5e-2,
                                                           "int8": 0.25, "tensorrt": 5e-2})
    """Largest |logit difference| each variant of a regression model may show (no CLI flag)."""
    overwrite: bool = _option(False, "replace an existing export directory")

    def __post_init__(self):
        if self.optimize is not None and self.optimize not in OPTIMIZE_LEVELS:
            raise ExportError(f"--optimize must be one of {', '.join(OPTIMIZE_LEVELS)} (got {self.optimize!r})")
        if self.optimize == "O4":
            self.fp16 = True
        if self.max_batch < 1 or self.max_seq < 1:
            raise ExportError("--max-batch and --max-seq must be >= 1")
        for name in ("min_agreement", "int8_min_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ExportError(f"{name} must be between 0 and 1")


# ------------------------------------------------------------------------------------------ sentences

def parity_sentences(parity_data: str | Path | Examples | None, limit: int) -> tuple[list, str, np.ndarray | None]:
    """Real sentences for parity: the first ``limit`` of a GLUE-style file (``ernie_common.tables``: a
    ``sentence`` column, or pairs such as ``sentence1``/``sentence2``, CoLA's header-less files too) or of
    rows given in memory, else the built-in review sentences; plus their integer gold labels when they have
    them (then accuracy is recorded beside agreement)."""
    if parity_data is None:
        return list(BUILTIN_SENTENCES)[:limit], "built-in review sentences", None
    if isinstance(parity_data, Examples):
        examples = Examples(parity_data.texts[:limit], (parity_data.labels or [])[:limit] or None,
                            parity_data.columns, parity_data.source)
    else:
        try:
            examples = read_examples(parity_data, limit=limit)
        except TableError as err:
            raise ExportError(f"--parity-data: {err}") from None
    where = examples.source or parity_data
    if not examples.texts:
        raise ExportError(f"--parity-data {where} holds no sentences: pass a GLUE TSV such as "
                          "../shared/data/glue/SST-2/dev.tsv")
    return examples.texts, f"{where} ({len(examples.texts)} rows)", _gold_labels(examples.labels)


def _gold_labels(labels: list[str] | None) -> np.ndarray | None:
    """Class ids when every label is one (regression scores and label words are not)."""
    if not labels or not all((label or "").strip().isdigit() for label in labels):
        return None
    return np.array([int(label) for label in labels])


# --------------------------------------------------------------------------------------------- parity

@dataclass
class Reference:
    """The PyTorch model's logits on the parity sentences, and the exact inputs that produced them."""

    batches: list[dict]
    logits: np.ndarray
    is_regression: bool
    gold: np.ndarray | None = None
    rows_per_s: float | None = None
    """PyTorch's speed on the parity rows (:func:`timed_batches`), the baseline of the variants' speeds."""

    def accuracy(self, logits: np.ndarray) -> float | None:
        if self.gold is None or self.is_regression:
            return None
        return float((logits.argmax(1) == self.gold).mean())


def run_batches(backend, batches: list[dict]) -> np.ndarray:
    return np.concatenate([backend(b) for b in batches])


def timed_batches(backend, batches: list[dict]) -> tuple[np.ndarray, float]:
    """The logits of ``batches`` and the rows per second of that pass, after one warm-up batch: a rough speed
    (this machine, the parity rows and batches), recorded beside each variant's parity."""
    backend(batches[0])
    start = time.perf_counter()
    logits = run_batches(backend, batches)
    return logits, round(len(logits) / max(time.perf_counter() - start, 1e-9), 1)


def parity(reference: Reference, logits: np.ndarray) -> dict:
    diff = float(np.abs(reference.logits - logits).max())
    result = {"n": int(len(logits)), "max_abs_logit_diff": diff}
    if not reference.is_regression:
        result["label_agreement"] = float((reference.logits.argmax(1) == logits.argmax(1)).mean())
    if reference.gold is not None and not reference.is_regression:
        result["accuracy"] = reference.accuracy(logits)
        result["torch_accuracy"] = reference.accuracy(reference.logits)
    return result


def check_parity(variant: str, result: dict, options: ExportOptions, is_regression: bool) -> None:
    """Raise ExportError when a variant changed the answers beyond its floor."""
    if is_regression:
        atol = options.regression_atol[variant]
        if result["max_abs_logit_diff"] > atol:
            raise ExportError(f"{variant} parity failed: regression outputs differ by up to "
                              f"{result['max_abs_logit_diff']:.4g} (> {atol}) from PyTorch")
        return
    floor = options.int8_min_agreement if variant == "int8" else options.min_agreement
    result["min_agreement"] = floor
    if result["label_agreement"] < floor:
        hint = " (lower it with --int8-min-agreement, or skip --int8)" if variant == "int8" else ""
        raise ExportError(f"{variant} parity failed: label agreement {result['label_agreement']:.2%} < "
                          f"{floor:.2%} on {result['n']} sentences (max |logit diff| "
                          f"{result['max_abs_logit_diff']:.4g}){hint}")


# ------------------------------------------------------------------------------------------- building

def fused_node_counts(onnx_path: Path) -> dict[str, int]:
    import onnx

    ops = Counter(node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node)
    return {op: ops.get(op, 0) for op in FUSED_OPS}


def fusion_report(counts: dict[str, int], num_layers: int) -> dict:
    """Compare the fused-node counts with what a fully fused BERT encoder of ``num_layers`` has."""
    attention = counts["Attention"] + counts["MultiHeadAttention"]
    gelu = counts["BiasGelu"] + counts["FastGelu"] + counts["Gelu"]
    notes = []
    if attention < num_layers:
        notes.append(f"ATTENTION DID NOT FUSE: {attention} fused attention nodes for {num_layers} layers; the "
                     "optimised graph runs unfused attention (slower)")
    if counts["SkipLayerNormalization"] < 2 * num_layers - 1:
        notes.append(f"SkipLayerNormalization: {counts['SkipLayerNormalization']} (expected about {2 * num_layers})")
    if gelu < num_layers:
        notes.append(f"Gelu fusion: {gelu} fused Gelu nodes for {num_layers} layers")
    if counts["EmbedLayerNormalization"] == 0:
        notes.append("EmbedLayerNormalization not fused: optimum disables it by default (incompatible with "
                     "ONNX Runtime quantisation)")
    return {"counts": counts, "layers": num_layers, "attention_fused": attention >= num_layers, "notes": notes}


def optimize_graph(onnx_path: Path, config, level: str, fp16: bool, scratch: Path) -> Path:
    """Run optimum's ORTOptimizer at ``level`` (fp16=True: O4-style mixed precision for GPUs).

    ORT's fusion reads the head count and head size from the graph's Reshape nodes, so padded heads
    (Q/K/V 384 wide on a 312-wide model) fuse with the model's own config.
    """
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    opt_config = AutoOptimizationConfig.with_optimization_level("O4" if fp16 else level, for_gpu=fp16)
    out_dir = scratch / ("fp16" if fp16 else "optimized")
    ORTOptimizer([onnx_path], config).optimize(opt_config, save_dir=out_dir, file_suffix=None)
    return out_dir / onnx_path.name


def quantize_graph(onnx_path: Path, scratch: Path) -> Path:
    """Dynamic INT8 quantisation with optimum's ORTQuantizer, tuned for this CPU's instruction set.

    Per-channel weight scales: per-tensor ones cost the real MiniLM about 5 points of label agreement
    on SST-2 dev. Quantises the plain graph: the quantiser's shape inference cannot type the fused com.microsoft ops, and
    ONNX Runtime fuses LayerNorm/Gelu in the quantised graph itself when the session starts.
    """
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
    qconfig = getattr(AutoQuantizationConfig, cpu_isa())(is_static=False, per_channel=True)
    out_dir = scratch / "int8"
    quantizer.quantize(save_dir=out_dir, quantization_config=qconfig, file_suffix=None)
    return out_dir / onnx_path.name


def cpu_isa() -> str:
    """The AutoQuantizationConfig preset for this CPU (avx512_vnni > avx512 > avx2; arm64 on ARM)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "avx2"
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


def onnx_opset(onnx_path: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def file_entry(path: Path, variant: str | None, purpose: str) -> dict:
    return {"variant": variant, "purpose": purpose, "sha256": sha256_file(path),
            "size_mb": round(path.stat().st_size / 2**20, 3)}


# ----------------------------------------------------------------------------------------------- main

def _load_source(model_dir: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = read_model_config(model_dir)
    check_tokenizer(model_dir)
    weights = weights_file(model_dir)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    except (ValueError, OSError) as err:
        raise ModelDirError(f"{model_dir} does not load as a sequence classifier: {str(err).splitlines()[0]}") from None
    return config, weights, model, AutoTokenizer.from_pretrained(model_dir)


def _pad_heads(model, reference: Reference) -> dict:
    from runtime.headpad import pad_attention_heads

    summary = pad_attention_heads(model)
    if summary["padded"]:
        diff = float(np.abs(run_batches(torch_backend(model), reference.batches) - reference.logits).max())
        summary["max_abs_logit_diff"] = diff
        if diff > HEAD_PAD_ATOL:
            raise ExportError(f"head padding changed the logits by {diff:.3g} (> {HEAD_PAD_ATOL}): "
                              "export without --pad-heads and report this model")
    return summary


def _export_onnx(model, tokenizer, work: Path, opset: int | None) -> Path:
    from optimum.exporters.onnx import onnx_export_from_model

    onnx_export_from_model(model, work, task="text-classification", opset=opset, do_validation=False,
                           preprocessors=[tokenizer])
    return work / VARIANT_FILES["fp32"]


def parity_device(variant: str) -> str:
    """Where a variant's parity is measured: the FP16 graph is built for the CUDA execution provider, so on a
    machine with a GPU and onnxruntime-gpu it is checked there (its CPU kernels are not what will serve it)."""
    if variant != "fp16" or not backends.gpu_available():
        return "cpu"
    import onnxruntime

    return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def _verify(variant: str, path: Path, reference: Reference, options: ExportOptions) -> dict:
    """Parity of one ONNX variant against PyTorch, or an ExportError. An FP16 graph that cannot be checked
    here is recorded as not passed (status 'needs a GPU' / 'not verified'): ``Classifier``'s auto choice
    skips it."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

    device = parity_device(variant)
    try:
        backend = onnxruntime_backend(path, device=device)
        logits, speed = timed_batches(backend, reference.batches)
        result = {**parity(reference, logits), "rows_per_s": speed}
    except (Fail, OrtNotImplemented) as err:  # an fp16 graph may lack CPU kernels: recorded, not served by auto
        if variant != "fp16":
            raise ExportError(f"onnxruntime cannot run the {variant} graph: {_first_line(err)}") from None
        return {"status": "needs a GPU", "device": device, "reason": _first_line(err)[:300]}
    except BackendUnavailable as err:  # CUDA is here but its provider did not start
        if variant != "fp16":
            raise
        return {"status": "not verified", "device": device, "reason": _first_line(err)[:300]}
    check_parity(variant, result, options, reference.is_regression)
    result.update(status="passed", device=device)
    return result


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _tool(step: str, fn, *args):
    """Run one optimum/ONNX Runtime step; its failure becomes a one-line ExportError."""
    try:
        return fn(*args)
    except (ModelDirError, BackendUnavailable, ExportError):
        raise
    except Exception as err:  # noqa: BLE001 - third-party tools raise anything; the CLI prints one line
        raise ExportError(f"{step} failed: {type(err).__name__}: {_first_line(err)}") from err


def _build_tensorrt(onnx_path: Path, work: Path, reference: Reference, options: ExportOptions) -> dict:
    from runtime.backends import tensorrt_backend
    from runtime.tensorrt import build_engine

    engine = build_engine(onnx_path, work, options.max_batch, options.max_seq)
    logits, speed = timed_batches(tensorrt_backend(engine), reference.batches)
    result = {**parity(reference, logits), "rows_per_s": speed}
    check_parity("tensorrt", result, options, reference.is_regression)
    result.update(status="passed", device="cuda")
    return result


def export(model_dir: str | Path, out_dir: str | Path, options: ExportOptions | None = None,
           log=print) -> dict:
    """Build every requested variant of ``model_dir`` into ``out_dir``; return the manifest.

    Raises ModelDirError (bad input), BackendUnavailable (--tensorrt without TensorRT/GPU) or ExportError
    (a tool failed, or a variant failed parity) before anything is written at ``out_dir``.
    """
    options = options or ExportOptions()
    model_dir, out = Path(model_dir), Path(out_dir)
    if out.exists() and not options.overwrite:
        raise ExportError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    if out.exists() and not (out / MANIFEST).is_file():
        raise ExportError(f"{out} exists and is not an export directory (no {MANIFEST}), so --overwrite does not "
                          "replace it: choose another --out")
    if options.tensorrt:
        from runtime.tensorrt import require_tensorrt

        require_tensorrt()
    config_dict, weights, model, tokenizer = _load_source(model_dir)
    texts, source, gold = parity_sentences(options.parity_data, options.parity_limit)
    # batches no larger than the TensorRT profile accepts (the same batches go through every variant)
    # encoded as runtime.Classifier encodes, so parity checks what will be served
    batches = Encoder(tokenizer, options.max_seq, str(model_dir)).batches(texts, min(PARITY_BATCH, options.max_batch))
    logits, speed = timed_batches(torch_backend(model), batches)
    reference = Reference(batches, logits, not labels_of(config_dict), gold, speed)
    log(f"parity set: {source}")

    scratch = Path(tempfile.mkdtemp(prefix="runtime-export-"))
    try:
        # built under a temporary name beside --out, renamed into place only when every variant passed
        with atomic_dir(out, if_exists="replace") as work:
            head_padding = _pad_heads(model, reference) if options.pad_heads else {"padded": False}
            manifest = _build(model, tokenizer, work, scratch, reference, options, log)
            manifest.update({
                "format_version": 1,
                "source": {"path": str(model_dir.resolve()), "weights": weights.name, "sha256": sha256_file(weights),
                           "architecture": (config_dict.get("architectures") or ["?"])[0]},
                "labels": labels_of(config_dict), "is_regression": reference.is_regression,
                "parity_max_seq": options.max_seq, "parity_data": source, "head_padding": head_padding,
                "torch_rows_per_s": reference.rows_per_s,
                "versions": library_versions(VERSIONED),
            })
            manifest["files"].update({p.name: file_entry(p, None, "tokenizer/config for the ONNX variants")
                                      for p in sorted(work.iterdir()) if p.suffix in (".json", ".txt")
                                      and p.name not in manifest["files"]})
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def _build(model, tokenizer, work: Path, scratch: Path, reference: Reference, options: ExportOptions,
           log) -> dict:
    fp32 = _tool("ONNX export (optimum)", _export_onnx, model, tokenizer, work, options.opset)
    manifest = {"opset": onnx_opset(fp32), "variants": {}, "files": {}, "parity": {}, "fusion": {}}

    def add(variant: str, path: Path, result: dict) -> None:
        target = work / VARIANT_FILES[variant]
        if path != target:
            os.replace(path, target)
        manifest["variants"][variant] = target.name
        manifest["files"][target.name] = file_entry(target, variant, PURPOSE[variant])
        manifest["parity"][variant] = result
        log(f"{variant:9s} {target.name:22s} {manifest['files'][target.name]['size_mb']:8.2f} MB  {_fmt(result)}")

    add("fp32", fp32, _verify("fp32", fp32, reference, options))
    layers = model.config.num_hidden_layers
    if options.optimize:
        level = "O3" if options.optimize == "O4" else options.optimize
        optimized = _tool(f"ORTOptimizer {level}", optimize_graph, fp32, model.config, level, False, scratch)
        manifest["fusion"]["optimized"] = fusion_report(fused_node_counts(optimized), layers)
        manifest["fusion"]["optimized"]["level"] = level
        for note in manifest["fusion"]["optimized"]["notes"]:
            log(f"fusion: {note}")
        add("optimized", optimized, _verify("optimized", optimized, reference, options))
    if options.fp16:
        fp16 = _tool("ORTOptimizer O4 (fp16)", optimize_graph, fp32, model.config, "O4", True, scratch)
        manifest["fusion"]["fp16"] = fusion_report(fused_node_counts(fp16), layers)
        add("fp16", fp16, _verify("fp16", fp16, reference, options))
    if options.int8:
        int8 = _tool("ORTQuantizer (dynamic int8)", quantize_graph, fp32, scratch)
        add("int8", int8, _verify("int8", int8, reference, options))
    if options.tensorrt:
        result = _tool("TensorRT engine build", _build_tensorrt, fp32, work, reference, options)
        add("tensorrt", work / VARIANT_FILES["tensorrt"], result)
        manifest["tensorrt"] = {"settings": "model_fp16.engine.json", "timing_cache": "timing.cache",
                                "max_batch": options.max_batch, "max_seq": options.max_seq}
    manifest["ort_tensorrt_ep"] = ("runtime.backends.onnxruntime_backend(DIR/model.onnx, device='cuda', "
                                   f"tensorrt_ep=True, trt_max_batch={options.max_batch}, "
                                   f"trt_max_seq={options.max_seq})  # engines cached in DIR/trt_cache")
    return manifest


def _fmt(result: dict) -> str:
    if result.get("status") != "passed":
        return f"parity: {result.get('status')} ({result.get('reason', '')[:80]})"
    agree = f", agreement {result['label_agreement']:.2%}" if "label_agreement" in result else ""
    acc = f", accuracy {result['accuracy']:.2%} (torch {result['torch_accuracy']:.2%})" if "accuracy" in result else ""
    speed = f", {result['rows_per_s']:g} rows/s" if "rows_per_s" in result else ""
    return f"parity: max |diff| {result['max_abs_logit_diff']:.2e}{agree}{acc} (n={result['n']}){speed}"


# ------------------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.export",
                                description="Export an HF sequence classifier to ONNX / ORT-fused / FP16 / INT8 / "
                                            "TensorRT, each variant checked against PyTorch on real sentences.")
    p.add_argument("model_dir", type=Path, help="HF sequence-classification directory (config with id2label)")
    p.add_argument("--out", type=Path, required=True, help="export directory to create")
    add_options(p, ExportOptions, skip=("regression_atol",))
    p.add_argument("--no-optimize", dest="optimize", action="store_const", const=None,
                   help="skip the ORT-optimised graph")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = ExportOptions(**{name: value for name, value in vars(args).items() if name not in ("model_dir", "out")})
    export(args.model_dir, args.out, options)
    print(f"wrote {args.out}/ ({MANIFEST} lists every file and its parity)")
    return 0


main = cli(main)

if __name__ == "__main__":
    sys.exit(main())
