"""What a result in a run folder depends on, as named inputs, and their hash: the result's fingerprint.

A run folder holds results that later invocations reuse: the fine-tuned teacher (``teacher/``), the pruned
start (``pruned/``) and one folder per stage. Each is reused only when everything it was computed from is
unchanged, so every input is named here, once:

* the recipe slice that shapes it (a stage's settings: losses, schedule, batch size, ``augment`` flag...);
* the task and its data: the task settings and slices, the data files *by content* (a GLUE folder's files
  for the task, a custom task's files), or the hub dataset's name;
* the teachers: a local model directory by the content of its config, weights and tokenizer files; a hub id
  by name; a teacher fine-tuned in the run by what it was fine-tuned from (:func:`finetune_inputs`);
* the student's shape and initialisation (a checkpoint student by content; a pruned one by its
  ``prune_from`` and ``prune`` settings);
* the general corpus (files by content, or the hub dataset's id, config, split and column; ``max_blocks``);
* for stages that train on augmented rows (``augment: true``, or after one that did): the recipe's ``augment``
  block and the augmented set's own fingerprint (:func:`augment_fingerprint`, also its cache folder's name);
* the seed;
* every earlier stage: a stage's inputs contain its predecessors', so the fingerprints form a chain rooted
  at the run's start (the pruned start when ``student.init: pruned``) and a changed stage invalidates every
  stage after it.

No absolute path is an input, so a run folder (or a data folder) moved elsewhere keeps its fingerprints.
Inputs are kept flat (``task.max_train_samples``, ``stages.tad.batch_size``) so that :func:`describe_change`
can say in one line what changed. Settings that cannot change a result (``logging_steps``, ``save_steps``,
``num_proc``, cache folders) are not inputs. Mixed precision is not an input either: a stage finished on a
CPU stays valid when the folder moves to a GPU machine.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from compressor.recipe.schema import FinetuneConfig, GeneralDataConfig, Recipe, TaskConfig, resolve_model_path
from compressor.recipe.tasks import GLUE_TASKS
from ernie_common.io import read_json, write_json_atomic

MODEL_FILES = ("config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "projections.pt",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
               "vocab.json", "merges.txt", "*.model")
"""The files that define a model directory's behaviour: config, weights (and a student's projections),
tokenizer. Bookkeeping beside them (metrics, fingerprints, ``training_args.bin`` with its absolute paths) is not."""
HASH_CACHE_MIN_BYTES = 1 << 20
"""Files at least this large have their digests cached by (path, size, modification time)."""


# --------------------------------------------------------------------------- content digests


def _hash_cache_path() -> Path:
    root = os.environ.get("COMPRESSOR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "compressor"
    return Path(root) / "file-digests.json"


_memo: dict[str, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content. Large files (weights) are hashed once per (path, size, mtime): the digest is
    kept in memory and in ``$COMPRESSOR_CACHE/file-digests.json`` (default ``~/.cache/compressor``), so a rerun
    does not read a 400 MB teacher again. The cache is only a shortcut: its keys never enter a fingerprint."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    if key in _memo:
        return _memo[key]
    cached = _read_cache() if stat.st_size >= HASH_CACHE_MIN_BYTES else {}
    if key not in cached:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        cached[key] = digest.hexdigest()
        if stat.st_size >= HASH_CACHE_MIN_BYTES:
            _write_cache(key, cached[key])
    _memo[key] = cached[key]
    return _memo[key]


def _read_cache() -> dict[str, str]:
    try:
        return dict(read_json(_hash_cache_path()))
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, digest: str) -> None:
    try:
        cache = _read_cache()
        cache = {k: v for k, v in cache.items() if Path(k.split("|")[0]).exists()}  # forget deleted files
        write_json_atomic(_hash_cache_path(), {**cache, key: digest})
    except OSError:  # a read-only home is no reason to fail a run
        pass


def _short(digest: str) -> str:
    return f"sha256:{digest[:16]}"


def model_identity(ref: str | None) -> str | None:
    """A local model directory by the content of its defining files (:data:`MODEL_FILES`); a hub id by name."""
    if ref is None:
        return None
    path = Path(resolve_model_path(ref)).expanduser()
    if not path.is_dir():
        return f"hub:{ref}"
    files = sorted({p for pattern in MODEL_FILES for p in path.glob(pattern) if p.is_file()} - {path / "training_args.bin"})
    listing = {p.name: file_digest(p) for p in files}
    return _short(hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest())


def _files_identity(files: list[str]) -> list[str]:
    return [_short(file_digest(f)) for f in files]


# --------------------------------------------------------------------------- the inputs, by part


def task_identity(cfg: TaskConfig) -> dict[str, Any]:
    """The task settings and slices, and its data by content (or the hub dataset's name); no paths."""
    out: dict[str, Any] = {k: v for k, v in cfg.model_dump().items()
                           if k not in ("glue_dir", "train_file", "validation_file")}
    if cfg.name == "custom":
        out["data"] = {"train": _files_identity([cfg.train_file])[0], "validation": _files_identity([cfg.validation_file])[0]}
    elif cfg.glue_dir:
        task = GLUE_TASKS[cfg.name]
        folder = Path(cfg.glue_dir) / task.glue_folder
        out["data"] = {"train": _files_identity([str(folder / "train.tsv")])[0],
                       "validation": _files_identity([str(folder / task.dev_file)])[0]}
    else:
        out["data"] = f"hub:nyu-mll/glue/{cfg.name}"
    return out


def corpus_identity(cfg: GeneralDataConfig) -> dict[str, Any]:
    """The general corpus: files by content, or a hub dataset by id/config/split/column (and whether it is read
    as a stream, which decides how it is packed); ``max_blocks``. Nothing when the recipe names none."""
    if cfg.files:
        return {"files": _files_identity(cfg.files), "max_blocks": cfg.max_blocks}
    if cfg.dataset:
        return {"dataset": cfg.dataset, "dataset_config": cfg.dataset_config, "split": cfg.split,
                "text_column": cfg.text_column, "streaming": cfg.streaming, "max_blocks": cfg.max_blocks}
    return {}


def finetune_inputs(pretrained: str, task: TaskConfig, finetune: FinetuneConfig, seed: int) -> dict[str, Any]:
    """What a teacher fine-tuned by ``compressor.finetune`` depends on."""
    return flatten({"teacher": {"pretrained": model_identity(pretrained), "finetune": finetune.model_dump()},
                    "task": task_identity(task), "seed": seed})


def teacher_identity(recipe: Recipe) -> dict[str, Any]:
    """Both teachers; a teacher fine-tuned in this run is identified by what it is fine-tuned from."""
    t = recipe.teacher
    if t.finetuned is not None:
        return {"pretrained": model_identity(t.pretrained), "finetuned": model_identity(t.finetuned)}
    return {"pretrained": model_identity(t.pretrained), "finetuned": "fine-tuned in this run",
            "finetune": t.finetune.model_dump()}


def student_identity(recipe: Recipe) -> dict[str, Any]:
    """Shape and initialisation; a checkpoint by content; ``prune_from``/``prune`` only for a pruned student."""
    s = recipe.student
    out: dict[str, Any] = {k: getattr(s, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                      "num_attention_heads", "init")}
    if s.init == "checkpoint":
        out["checkpoint"] = model_identity(s.checkpoint)
    if s.init == "pruned":
        out.update(prune_from=s.prune_from, prune=s.prune.model_dump())
    return out


def augment_identity(recipe: Recipe) -> dict[str, Any]:
    """The recipe's ``augment`` block, its files by content and its masked-language model by identity."""
    a = recipe.augment
    out: dict[str, Any] = {}
    if a is not None and a.transfer is not None:
        out["transfer"] = {**a.transfer.model_dump(), "files": _files_identity(a.transfer.files)}
    if a is not None and a.mlm is not None:
        out["mlm"] = {**a.mlm.model_dump(), "model": model_identity(a.mlm.model)}
    return out


def augment_inputs(recipe: Recipe) -> dict[str, Any]:
    """What the augmented set (compressor/data/augment.py) is generated from: the ``augment`` block, the task's
    training rows (its data by content and its slice), the general corpus (transfer sentences) and the seed."""
    return flatten({"augment": augment_identity(recipe), "task": task_identity(recipe.task),
                    "general": corpus_identity(recipe.general), "seed": recipe.seed})


def augment_fingerprint(recipe: Recipe) -> str:
    """The augmented set's fingerprint: the name of its cache folder, and an input of every stage that trains on
    it (so the cache and the stages agree, and neither depends on where the data lies)."""
    return fingerprint(augment_inputs(recipe))


def run_inputs(recipe: Recipe) -> dict[str, Any]:
    """What every result of the run shares: task, teachers, student, corpus, seed. The pruned start depends on
    exactly these (its calibration data is the task's or the corpus's), so they are its inputs."""
    return flatten({"task": task_identity(recipe.task), "teacher": teacher_identity(recipe),
                    "student": student_identity(recipe), "general": corpus_identity(recipe.general),
                    "seed": recipe.seed})


def stage_inputs(recipe: Recipe, index: int) -> dict[str, Any]:
    """Everything stage ``index``'s student depends on: the run's inputs, this stage's settings and those of
    every stage before it (the chain), and the ``augment`` block when this stage or an earlier one uses it."""
    stages = recipe.stages[: index + 1]
    parts: dict[str, Any] = {"stages": {s.name: s.model_dump(exclude={"name"}) for s in stages},
                             "order": [s.name for s in stages]}
    if stages[-1].data == "task":  # cached teacher outputs are fp16: the same losses within fp16 rounding
        parts["teacher_cache"] = recipe.teacher_cache.enabled
    if any(s.augment for s in stages):
        parts["augment"] = {**augment_identity(recipe), "data": augment_fingerprint(recipe)}
    return {**run_inputs(recipe), **flatten(parts)}


# --------------------------------------------------------------------------- hashing and diffs


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"task": {"name": "sst2"}}`` -> ``{"task.name": "sst2"}``; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def fingerprint(inputs: dict[str, Any]) -> str:
    """The hash of a result's inputs (canonical JSON, sha256, 16 hex digits)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_fingerprint(recipe: Recipe, index: int) -> str:
    return fingerprint(stage_inputs(recipe, index))


def describe_change(before: dict[str, Any], after: dict[str, Any], limit: int = 3) -> str:
    """``task.max_train_samples: 12000 -> 5000, seed: 42 -> 7`` (at most ``limit`` named, then how many more)."""
    changed = [k for k in [*after, *[k for k in before if k not in after]] if before.get(k, _ABSENT) != after.get(k, _ABSENT)]
    shown = [f"{k}: {_show(before.get(k, _ABSENT))} -> {_show(after.get(k, _ABSENT))}" for k in changed[:limit]]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(shown) + more if shown else "the recorded inputs do not say what"


_ABSENT = object()


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else json.dumps(value, default=str)
