"""Task data (GLUE by name, or CSV/JSON/TSV files) and the streamed, packed general corpus.

Everything goes through ``datasets`` so tokenisation is cached on disk and a corpus of any size streams.
Task data is normalised to the columns ``text_a``, optional ``text_b`` and ``label`` (int class id, or
float for regression) whatever its source, so the rest of the package never sees source quirks.
"""
from __future__ import annotations

import csv
import logging
from itertools import chain
from pathlib import Path
from typing import Any

import datasets

from compressor.config import TaskConfig
from compressor.tasks import GLUE_TASKS, Task

log = logging.getLogger(__name__)

HUB_GLUE = "nyu-mll/glue"
TEXT_COLUMNS = ("text_a", "text_b")


class DataError(ValueError):
    """Unreadable or mis-described data; the message is one line that names the fix."""


# --------------------------------------------------------------------------- task description


def task_spec(cfg: TaskConfig) -> Task:
    """The GLUE task of that name, or a :class:`Task` describing the user's own files."""
    if cfg.name in GLUE_TASKS:
        return GLUE_TASKS[cfg.name]
    if cfg.name != "custom":
        raise DataError(f"unknown task {cfg.name!r}; use one of {', '.join(GLUE_TASKS)} or 'custom'")
    if not cfg.text_columns or not cfg.num_labels:
        raise DataError("custom task data needs task.text_columns and task.num_labels (1 for regression)")
    labels = () if cfg.num_labels == 1 else tuple(_custom_label_names(cfg))
    return Task("custom", "", tuple(cfg.text_columns), cfg.label_column, labels,
                "pearson" if cfg.num_labels == 1 else "accuracy")


def _custom_label_names(cfg: TaskConfig) -> list[str]:
    """String labels in the training file become classes in sorted order; integer labels keep their ids."""
    train = _read_files({"train": cfg.train_file})["train"]
    _require_columns(train, [cfg.label_column], cfg.train_file, "task.label_column")
    values = sorted({v for v in train[cfg.label_column] if v is not None}, key=str)
    if all(isinstance(v, int) for v in values):
        names = [str(i) for i in range(cfg.num_labels)]
        if values and (values[0] < 0 or values[-1] >= cfg.num_labels):
            raise DataError(f"labels in {cfg.train_file} run {values[0]}..{values[-1]} but task.num_labels is {cfg.num_labels}")
        return names
    names = [str(v) for v in values]
    if len(names) != cfg.num_labels:
        raise DataError(f"{cfg.train_file} has {len(names)} distinct labels {names[:5]} but task.num_labels is {cfg.num_labels}")
    return names


# --------------------------------------------------------------------------- reading


def _read_files(files: dict[str, str]) -> datasets.DatasetDict:
    for f in files.values():
        if not Path(f).is_file():
            raise DataError(f"data file {f} does not exist; fix the path in the recipe (task.*_file / glue_dir)")
    suffix = Path(next(iter(files.values()))).suffix.lower()
    if suffix in (".json", ".jsonl"):
        return datasets.load_dataset("json", data_files=files)
    sep = "\t" if suffix == ".tsv" else ","
    return datasets.load_dataset("csv", data_files=files, delimiter=sep, quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
                                 encoding="utf-8-sig")


def _read_glue_dir(task: Task, glue_dir: str) -> datasets.DatasetDict:
    folder = Path(glue_dir) / task.glue_folder
    files = {"train": folder / "train.tsv", "validation": folder / task.dev_file}
    for f in files.values():
        if not f.is_file():
            raise DataError(f"{f} not found: task.glue_dir must hold GLUE's {task.glue_folder}/ folder with train.tsv and {task.dev_file}")
    kwargs: dict[str, Any] = dict(delimiter="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig")
    if task.header:
        kwargs.update(header=None, column_names=list(task.header))
    return datasets.load_dataset("csv", data_files={k: str(v) for k, v in files.items()}, **kwargs)


def _read_glue_hub(task: Task) -> datasets.DatasetDict:
    dsd = datasets.load_dataset(HUB_GLUE, task.name)
    val = "validation_matched" if task.name == "mnli" else "validation"
    dsd = datasets.DatasetDict(train=dsd["train"], validation=dsd[val])
    hub_cols = task.hub_text_columns or task.text_columns
    renames = {h: t for h, t in zip(hub_cols, task.text_columns) if h != t}
    if task.label_column != "label":
        renames["label"] = task.label_column
    return dsd.rename_columns(renames)


def _require_columns(ds: datasets.Dataset, columns: list[str], source: str, key: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"column {missing[0]!r} not found in {source} (columns: {', '.join(ds.column_names)}); set {key}")


def _normalise(dsd: datasets.DatasetDict, task: Task, source: str) -> datasets.DatasetDict:
    """Rename to text_a/text_b/label, encode labels, drop rows with missing text or label."""
    for split, ds in dsd.items():
        _require_columns(ds, list(task.text_columns), f"{source} ({split})", "task.text_columns")
        _require_columns(ds, [task.label_column], f"{source} ({split})", "task.label_column")
    columns = dict(zip(task.text_columns, TEXT_COLUMNS)) | {task.label_column: "label"}
    names = task.tsv_label_values or task.labels

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        label = row["label"]
        try:
            if task.is_regression:
                row["label"] = float(label)
            elif isinstance(label, str) and names and label in names:
                row["label"] = names.index(label)
            else:
                row["label"] = int(label)
        except ValueError:
            raise DataError(f"{source}: label {label!r} is not one of {list(names or task.labels)}; check task.label_column") from None
        return row

    out = {}
    for split, ds in dsd.items():
        ds = ds.select_columns(list(columns)).rename_columns({k: v for k, v in columns.items() if k != v})
        keep = TEXT_COLUMNS[: len(task.text_columns)]
        before = len(ds)
        ds = ds.filter(lambda r: r["label"] is not None and all(isinstance(r[c], str) and r[c].strip() for c in keep))
        if len(ds) < before:
            log.warning("%s %s: dropped %d rows with empty text or label", source, split, before - len(ds))
        ds = ds.map(encode).cast_column("label", datasets.Value("float32" if task.is_regression else "int64"))
        if not task.is_regression:
            bad = [v for v in ds.unique("label") if not 0 <= v < task.num_labels]
            if bad:
                raise DataError(f"{source} ({split}) has label id {bad[0]} outside 0..{task.num_labels - 1}; check task.label_column/num_labels")
        out[split] = ds
    return datasets.DatasetDict(out)


def load_task_data(cfg: TaskConfig) -> datasets.DatasetDict:
    """``train`` and ``validation`` splits with columns text_a, [text_b,] label; slices applied (first N rows)."""
    task = task_spec(cfg)
    if task.name == "custom":
        if not (cfg.train_file and cfg.validation_file):
            raise DataError("custom task data needs task.train_file and task.validation_file")
        raw, source = _read_files({"train": cfg.train_file, "validation": cfg.validation_file}), cfg.train_file
    elif cfg.glue_dir:
        raw, source = _read_glue_dir(task, cfg.glue_dir), str(Path(cfg.glue_dir) / task.glue_folder)
    else:
        raw, source = _read_glue_hub(task), f"{HUB_GLUE}/{task.name}"
    for split, limit in (("train", cfg.max_train_samples), ("validation", cfg.max_eval_samples)):
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return _normalise(raw, task, source)


# --------------------------------------------------------------------------- tokenisation


def tokenize_task(dsd: datasets.DatasetDict, tokenizer, max_seq_length: int) -> datasets.DatasetDict:
    """Token ids (no padding: collators pad each batch to its longest row) and ``labels``; cached by datasets."""
    pair = "text_b" in next(iter(dsd.values())).column_names

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text_a"], batch["text_b"] if pair else None, truncation=True, max_length=max_seq_length)
        enc["labels"] = batch["label"]
        return enc

    removed = next(iter(dsd.values())).column_names
    out = dsd.map(encode, batched=True, remove_columns=removed, desc=f"tokenising (max {max_seq_length})")
    if next(iter(out.values())).features["labels"].dtype.startswith("float"):
        out = out.cast_column("labels", datasets.Value("float32"))
    return out


def general_blocks(files: list[str], tokenizer, block_size: int, max_blocks: int | None = None,
                   seed: int = 0, shuffle_buffer: int = 2048) -> datasets.IterableDataset:
    """Stream plain-text files (``.gz`` too), tokenise and pack into ``[CLS] ... [SEP]`` blocks of ``block_size``.

    Nothing is materialised, so a corpus of hundreds of GB reads the same way as the demo's 22 MB; a
    shuffle buffer mixes neighbouring blocks. Blank lines (document breaks) are skipped.
    """
    for f in files:
        if not Path(f).is_file():
            raise DataError(f"general corpus file {f} does not exist; fix general.files in the recipe")
    if block_size < 8:
        raise DataError(f"block size {block_size} is too small; use max_seq_length >= 8")
    body = block_size - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return {"ids": tokenizer([t for t in batch["text"]], add_special_tokens=False)["input_ids"]}

    def pack(batch: dict[str, list]) -> dict[str, list]:
        flat = list(chain.from_iterable(batch["ids"]))
        chunks = [flat[i:i + body] for i in range(0, len(flat) - body + 1, body)]
        ids = [[cls_id, *c, sep_id] for c in chunks]
        out = {"input_ids": ids, "attention_mask": [[1] * block_size for _ in ids]}
        if "token_type_ids" in tokenizer.model_input_names:  # BERT-style tokenizers only (not MPNet)
            out["token_type_ids"] = [[0] * block_size for _ in ids]
        return out

    stream = datasets.load_dataset("text", data_files=[str(f) for f in files], split="train", streaming=True)
    stream = stream.filter(lambda r: bool(r["text"].strip()))
    stream = stream.map(tokenize, batched=True, batch_size=256, remove_columns=["text"])
    stream = stream.map(pack, batched=True, batch_size=256, remove_columns=["ids"])
    stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    return stream.take(max_blocks) if max_blocks else stream
