"""Task data: GLUE by name (a local GLUE folder or the hub), or the user's CSV/JSON/TSV files.

Everything goes through ``datasets`` so tokenisation is cached on disk and a corpus of any size streams.
Task data is normalised to the columns ``text_a``, optional ``text_b`` and ``label`` (int class id, or
float for regression) whatever its source, so the rest of the package never sees source quirks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets

from compressor.data import TEXT_COLUMNS, DataError, check_file, from_hub, read_table
from compressor.recipe.schema import TaskConfig
from compressor.recipe.tasks import GLUE_TASKS, Task
from ernie_common.tables import csv_options

log = logging.getLogger(__name__)

HUB_GLUE = "nyu-mll/glue"




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
    return read_table(files, "task.train_file / task.validation_file")


def _read_glue_dir(task: Task, glue_dir: str) -> datasets.DatasetDict:
    folder = Path(glue_dir) / task.glue_folder
    files = {"train": folder / "train.tsv", "validation": folder / task.dev_file}
    for f in files.values():
        if not f.is_file():
            raise DataError(f"{f} not found: task.glue_dir must hold GLUE's {task.glue_folder}/ folder with train.tsv and {task.dev_file}")
        check_file(f, "task.glue_dir")
    kwargs: dict[str, Any] = csv_options(files["train"])
    if task.header:
        kwargs.update(header=None, column_names=list(task.header))
    return datasets.load_dataset("csv", data_files={k: str(v) for k, v in files.items()}, **kwargs)


def _read_glue_hub(task: Task) -> datasets.DatasetDict:
    dsd = from_hub(f"{HUB_GLUE} ({task.name})", lambda: datasets.load_dataset(HUB_GLUE, task.name))
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


def _normalise(dsd: datasets.DatasetDict, task: Task, sources: dict[str, str]) -> datasets.DatasetDict:
    """Rename to text_a/text_b/label, encode labels, drop rows with missing text or label."""
    for split, ds in dsd.items():
        _require_columns(ds, list(task.text_columns), f"{sources[split]} ({split})", "task.text_columns")
        _require_columns(ds, [task.label_column], f"{sources[split]} ({split})", "task.label_column")
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
        source = sources[split]  # encode() reads it too
        ds = ds.select_columns(list(columns)).rename_columns({k: v for k, v in columns.items() if k != v})
        keep = TEXT_COLUMNS[: len(task.text_columns)]
        _check_rows(ds, keep, task, f"{source} ({split})")
        before = len(ds)
        ds = ds.filter(lambda r: all(isinstance(r[c], str) and r[c].strip() for c in keep))
        if len(ds) < before:
            log.warning("%s %s: dropped %d rows with empty text", source, split, before - len(ds))
        ds = ds.map(encode).cast_column("label", datasets.Value("float32" if task.is_regression else "int64"))
        if not task.is_regression:
            bad = [v for v in ds.unique("label") if not 0 <= v < task.num_labels]
            if bad:
                raise DataError(f"{source} ({split}) has label id {bad[0]} outside 0..{task.num_labels - 1}; check task.label_column/num_labels")
        out[split] = ds
    return datasets.DatasetDict(out)


def _check_rows(ds: datasets.Dataset, text_columns: tuple[str, ...], task: Task, where: str) -> None:
    """Every row has a label, and each text column has text in some row; else one line naming the fix."""
    labels = ds["label"]
    missing = [i for i, v in enumerate(labels) if v is None or (isinstance(v, float) and v != v)]
    if missing:
        raise DataError(f"{where}: {len(missing)} of {len(labels)} rows have no {task.label_column!r} value (first: "
                        f"data row {missing[0] + 1}); fill them in or remove those rows")
    for column, name in zip(text_columns, task.text_columns):
        if not any(isinstance(t, str) and t.strip() for t in ds[column]):
            raise DataError(f"{where}: column {name!r} is empty in every row; point task.text_columns at the text")


def load_task_data(cfg: TaskConfig) -> datasets.DatasetDict:
    """``train`` and ``validation`` splits with columns text_a, [text_b,] label; slices applied (first N rows)."""
    task = task_spec(cfg)
    if task.name == "custom":
        if not (cfg.train_file and cfg.validation_file):
            raise DataError("custom task data needs task.train_file and task.validation_file")
        sources = {"train": cfg.train_file, "validation": cfg.validation_file}
        raw = _read_files(sources)
    elif cfg.glue_dir:
        folder = Path(cfg.glue_dir) / task.glue_folder
        raw, sources = _read_glue_dir(task, cfg.glue_dir), {"train": str(folder / "train.tsv"),
                                                           "validation": str(folder / task.dev_file)}
    else:
        raw, sources = _read_glue_hub(task), {split: f"{HUB_GLUE}/{task.name}" for split in ("train", "validation")}
    for split, limit in (("train", cfg.max_train_samples), ("validation", cfg.max_eval_samples)):
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return _normalise(raw, task, sources)


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
