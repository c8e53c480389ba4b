"""Task data (GLUE by name, or CSV/JSON/TSV files) and the packed general corpus (local text files or a hub dataset).

Everything goes through ``datasets`` so tokenisation is cached on disk and a corpus of any size streams.
Task data is normalised to the columns ``text_a``, optional ``text_b`` and ``label`` (int class id, or
float for regression) whatever its source, so the rest of the package never sees source quirks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator

import datasets

from compressor.config import GeneralDataConfig, TaskConfig
from compressor.tasks import GLUE_TASKS, Task
from ernie_common.env import usable_cpus
from ernie_common.io import atomic_dir
from ernie_common.tables import csv_options

log = logging.getLogger(__name__)

HUB_GLUE = "nyu-mll/glue"
TEXT_COLUMNS = ("text_a", "text_b")


class DataError(ValueError):
    """Unreadable or mis-described data; the message is one line that names the fix."""


class HubUnreachable(DataError):
    """A dataset named by hub id could not be read (offline, or no such dataset/config)."""


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
    return datasets.load_dataset("csv", data_files=files, **csv_options(next(iter(files.values()))))


def _read_glue_dir(task: Task, glue_dir: str) -> datasets.DatasetDict:
    folder = Path(glue_dir) / task.glue_folder
    files = {"train": folder / "train.tsv", "validation": folder / task.dev_file}
    for f in files.values():
        if not f.is_file():
            raise DataError(f"{f} not found: task.glue_dir must hold GLUE's {task.glue_folder}/ folder with train.tsv and {task.dev_file}")
    kwargs: dict[str, Any] = csv_options(files["train"])
    if task.header:
        kwargs.update(header=None, column_names=list(task.header))
    return datasets.load_dataset("csv", data_files={k: str(v) for k, v in files.items()}, **kwargs)


def _read_glue_hub(task: Task) -> datasets.DatasetDict:
    dsd = _hub(f"{HUB_GLUE} ({task.name})", lambda: datasets.load_dataset(HUB_GLUE, task.name))
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


# --------------------------------------------------------------------------- the general corpus

PACKED_FORMAT = 1
"""Bumped whenever the packed layout changes, so old caches are not read."""
PACKED_FEATURES = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})


def pack_blocks(tokenizer, block_size: int) -> Callable[[list[str]], dict[str, list]]:
    """``texts -> {"input_ids": blocks}``: tokenise, concatenate, cut into ``[CLS] ... [SEP]`` blocks of
    ``block_size``. Blank lines (document breaks) are skipped; the tail shorter than a block is dropped.
    Only ids are stored: the collator adds the (all-ones) attention mask, BERT defaults token types to 0."""
    if block_size < 8:
        raise DataError(f"block size {block_size} is too small; use max_seq_length >= 8")
    body, cls_id, sep_id = block_size - 2, tokenizer.cls_token_id, tokenizer.sep_token_id

    def pack(texts: list[str]) -> dict[str, list]:
        ids = tokenizer([t for t in texts if t and t.strip()], add_special_tokens=False)["input_ids"]
        flat = list(chain.from_iterable(ids))
        return {"input_ids": [[cls_id, *flat[i:i + body], sep_id] for i in range(0, len(flat) - body + 1, body)]}

    return pack


def _hub(what: str, load: Callable[[], Any]) -> Any:
    """Run a hub load; an unreachable hub or unknown name becomes one line naming the fix."""
    try:
        return load()
    except (ConnectionError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubUnreachable(f"cannot read {what} from the Hugging Face hub ({reason}); check the name, go online, "
                             f"or use local files instead") from None


def _source(cfg: GeneralDataConfig, streaming: bool):
    """The raw text as a ``datasets`` (Iterable)Dataset with a ``text`` column of one paragraph per row."""
    if cfg.files:
        for f in cfg.files:
            if not Path(f).is_file():
                raise DataError(f"general corpus file {f} does not exist; fix general.files in the recipe")
        return datasets.load_dataset("text", data_files=[str(f) for f in cfg.files], split="train", streaming=streaming)
    what = f"{cfg.dataset}" + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    ds = _hub(what, lambda: datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split, streaming=streaming))
    columns = ds.column_names
    if columns is None:  # a stream whose features the hub does not list: look at its first row
        columns = list(next(iter(ds), None) or {})
    if cfg.text_column not in columns:
        raise DataError(f"{what} has no column {cfg.text_column!r} (columns: {', '.join(columns)}); set general.text_column")
    return ds.select_columns([cfg.text_column]).rename_columns({cfg.text_column: "text"}) if cfg.text_column != "text" else ds


def general_texts(cfg: GeneralDataConfig) -> Iterator[str]:
    """The general corpus's raw paragraphs in order, streamed (files or hub dataset); blank ones skipped."""
    for row in _source(cfg, streaming=True):
        if row["text"] and row["text"].strip():
            yield row["text"]


def _tokenizer_identity(tokenizer) -> str:
    """What decides the ids: the fast tokenizer's definition (minus its run-time truncation/padding state)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = datasets.fingerprint.Hasher.hash(tokenizer)
    return hashlib.sha256(f"{type(tokenizer).__name__}|{tokenizer.cls_token_id}|{tokenizer.sep_token_id}|{text}".encode()).hexdigest()


def packed_path(cfg: GeneralDataConfig, tokenizer, block_size: int) -> Path:
    """Where the packed corpus for (source, tokenizer, block size[, max_blocks]) lives; a local file counts as
    changed when its size or modification time does."""
    if cfg.files:
        source: dict[str, Any] = {"files": [(str(Path(f).resolve()), Path(f).stat().st_size, Path(f).stat().st_mtime_ns)
                                            for f in cfg.files]}
        name = Path(cfg.files[0]).name.split(".")[0]
    else:
        source = {"dataset": cfg.dataset, "config": cfg.dataset_config, "split": cfg.split, "column": cfg.text_column,
                  "streaming": cfg.streaming}
        name = "-".join(p for p in (cfg.dataset.replace("/", "_"), cfg.dataset_config) if p)
    key = {"format": PACKED_FORMAT, "source": source, "tokenizer": _tokenizer_identity(tokenizer),
           "block_size": block_size, "max_blocks": cfg.max_blocks}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "compressor_packed"
    limit = f"-n{cfg.max_blocks}" if cfg.max_blocks else ""
    return root / f"{name}-b{block_size}{limit}-{digest}"


def _processes(cfg: GeneralDataConfig) -> int:
    return cfg.num_proc or usable_cpus()


def _build_streamed(cfg: GeneralDataConfig, tokenizer, block_size: int, work: Path) -> datasets.Dataset:
    """Stream the source until ``max_blocks`` (or its end), one process per group of its shards (files, parquet
    files); each process tokenises and packs its own part, written as Arrow by ``Dataset.from_generator``."""
    shards = _source(cfg, streaming=True).num_shards
    procs = max(1, min(_processes(cfg), shards))
    limit = math.ceil(cfg.max_blocks / procs) if cfg.max_blocks else None
    pack = pack_blocks(tokenizer, block_size)

    def blocks(part: list[int]):
        for index in part:
            stream = _source(cfg, streaming=True).shard(num_shards=procs, index=index)
            made = 0
            for batch in stream.iter(batch_size=1000):
                for ids in pack(batch["text"])["input_ids"]:
                    yield {"input_ids": ids}
                    made += 1
                    if limit and made >= limit:
                        return

    ds = datasets.Dataset.from_generator(blocks, features=PACKED_FEATURES, cache_dir=str(work), num_proc=procs if procs > 1 else None,
                                         gen_kwargs={"part": list(range(procs))}, fingerprint=work.name)
    return ds.select(range(cfg.max_blocks)) if cfg.max_blocks and len(ds) > cfg.max_blocks else ds


def _build_mapped(cfg: GeneralDataConfig, tokenizer, block_size: int, work: Path) -> datasets.Dataset:
    """The whole source as an Arrow table, tokenised and packed by ``map`` in ``num_proc`` processes."""
    raw = _source(cfg, streaming=False)
    pack = pack_blocks(tokenizer, block_size)
    procs = max(1, min(_processes(cfg), len(raw) // 1000 or 1))
    ds = raw.map(lambda batch: pack(batch["text"]), batched=True, batch_size=1000, remove_columns=raw.column_names,
                 features=PACKED_FEATURES, num_proc=procs if procs > 1 else None, cache_file_name=str(work / "blocks.arrow"),
                 desc=f"tokenising and packing the general corpus (blocks of {block_size})")
    return ds.select(range(cfg.max_blocks)) if cfg.max_blocks and len(ds) > cfg.max_blocks else ds


def general_corpus(cfg: GeneralDataConfig, tokenizer, block_size: int) -> datasets.Dataset:
    """The general corpus as packed blocks of ``block_size`` token ids, built once and memory-mapped after that.

    Built in parallel (``num_proc`` processes) into a temp folder and renamed into place, so a killed build
    leaves nothing half-written; later stages and runs with the same source, tokenizer and block size read
    it from disk. A map-style dataset: the Trainer shuffles all of it, DDP ranks draw disjoint indices, and a
    resumed stage skips the batches it had trained on through the sampler, without reading them.
    ``max_blocks`` (or a streamed hub dataset) reads the source as a stream, stopping after that many blocks.
    """
    path = packed_path(cfg, tokenizer, block_size)
    if not (path / "dataset_info.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.scratch-"))
        try:
            # "keep": another process that finished the same build first has a copy as good as ours
            with atomic_dir(path, if_exists="keep") as packed:
                streamed = cfg.max_blocks is not None or (cfg.dataset is not None and cfg.streaming)
                built = (_build_streamed if streamed else _build_mapped)(cfg, tokenizer, block_size, scratch)
                if len(built) == 0:
                    raise DataError(f"the general corpus gave no block of {block_size} tokens; give more text or a smaller max_seq_length")
                built.save_to_disk(str(packed))
            log.info("general corpus: %d blocks of %d tokens in %s", len(built), block_size, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m compressor.data --config RECIPE [overrides]``: pack the recipe's general corpus for each general
    stage's block size ahead of a ``torchrun`` job, whose other ranks would otherwise wait for the build at a
    barrier (30 minutes at most by default): a Wikipedia-scale first build is worth running on its own."""
    import argparse
    import sys

    from transformers import AutoTokenizer

    from compressor.config import ConfigError, load_recipe

    p = argparse.ArgumentParser(prog="python -m compressor.data",
                                description="Pack a recipe's general corpus once, ahead of training.")
    p.add_argument("--config", required=True, action="append", help="recipe, then overlays (as compressor.distill)")
    args, overrides = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        recipe = load_recipe(args.config, overrides)
        tokenizer = AutoTokenizer.from_pretrained(recipe.teacher.finetuned or recipe.teacher.pretrained)
        for size in sorted({s.max_seq_length for s in recipe.stages if s.data == "general"}):
            blocks = general_corpus(recipe.general, tokenizer, size)
            print(f"{len(blocks)} blocks of {size} tokens: {packed_path(recipe.general, tokenizer, size)}")
    except (ConfigError, DataError, OSError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
