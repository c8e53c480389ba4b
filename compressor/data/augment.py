"""Augmented task data for the task stages: a transfer set and TinyBERT-style word replacement.

Task data is small; distillation learns from the teacher's *outputs*, which exist for any text. Two sources
of more text (TinyBERT's ablation: its largest effect):

* **transfer set**: unlabeled sentences from the general corpus or from the user's own in-domain files
  (single-sentence tasks: sentences; pair tasks: neighbouring sentences of one paragraph, or two columns);
* **MLM word replacement** (TinyBERT): ``copies`` copies of each task example in which every single-piece
  word is, with probability ``p``, replaced by one of a masked-language model's top-``top_k`` predictions.
  The chosen words of one copy are masked together and predicted in one forward pass (TinyBERT masks one
  word at a time: ``n`` passes per sentence).

Augmented rows never carry a gold label (:data:`NO_LABEL` for classification, NaN for regression): a word
replacement can flip a sentence's label and a transfer sentence has none, so they train on the teacher's
outputs only (latent and soft-label losses); the hard-label loss skips them. Only the named text columns of
a transfer file are read.

The augmented set is generated once per (task data, recipe ``augment`` block, corpus, seed), saved with
``datasets``' ``save_to_disk`` under a fingerprinted folder (written under a temporary name, then renamed)
and loaded from there afterwards.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any, Iterator

import datasets

from compressor.data import NO_LABEL, TEXT_COLUMNS, DataError, check_file, read_table
from compressor.data.corpus import general_texts
from compressor.recipe.schema import AugmentConfig, GeneralDataConfig, MLMConfig, TransferConfig
from compressor.recipe.tasks import Task
from ernie_common.io import atomic_dir

log = logging.getLogger(__name__)

SOURCE_COLUMN = "source"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
CANDIDATES_PER_EXAMPLE = 4
"""Transfer candidates read per example wanted, before the seeded sample (bounds the read of a huge corpus)."""


# --------------------------------------------------------------------------- transfer set


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(paragraph.strip()) if s.strip()]


def _text_lines(files: list[str]) -> Iterator[str]:
    """Lines of plain-text files (``.gz`` too), streamed through ``datasets``."""
    for f in files:
        check_file(Path(f), "augment.transfer.files")
    stream = datasets.load_dataset("text", data_files=[str(f) for f in files], split="train", streaming=True)
    for row in stream:
        if row["text"].strip():
            yield row["text"]


def _table_rows(files: list[str], columns: list[str]) -> Iterator[tuple[str, ...]]:
    """Only ``columns`` of TSV/CSV/JSON files; every other column (a label, say) is dropped unread."""
    ds = datasets.concatenate_datasets([read_table({"train": f}, "augment.transfer.files")["train"] for f in files])
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"augment.transfer.column {missing[0]!r} is not in {files[0]} (columns: "
                        f"{', '.join(ds.column_names)}); fix augment.transfer.column")
    for column in columns:
        if not any(isinstance(v, str) and v.strip() for v in ds[column]):
            raise DataError(f"{files[0]}: column {column!r} is empty in every row; point augment.transfer.column "
                            "at the text")
    for row in ds.select_columns(columns):
        values = tuple(row[c] for c in columns)
        if all(isinstance(v, str) and v.strip() for v in values):
            yield values


def transfer_candidates(cfg: TransferConfig, general: GeneralDataConfig, pair: bool) -> Iterator[tuple[str, ...]]:
    """Candidate examples in file order: 1-tuples for single-sentence tasks, 2-tuples for pair tasks."""
    files = cfg.files
    table = cfg.source == "files" and Path(files[0]).suffix.lower() in (".tsv", ".csv", ".json", ".jsonl")
    if table:
        if not cfg.column:
            raise DataError(f"{files[0]} is a table: set augment.transfer.column to its text column"
                            + (" (two columns for a pair task: 'a,b')" if pair else ""))
        columns = [c.strip() for c in cfg.column.split(",")]
        if len(columns) != (2 if pair else 1):
            raise DataError(f"augment.transfer.column names {len(columns)} column(s) but the task takes "
                            f"{'pairs: give two, a,b' if pair else 'single texts: give one'}")
        for row in _table_rows(files, columns):
            if all(cfg.min_words <= len(text.split()) <= cfg.max_words for text in row):
                yield row
        return
    for line in general_texts(general) if cfg.source == "general" else _text_lines(files):
        sentences = [s for s in split_sentences(line) if cfg.min_words <= len(s.split()) <= cfg.max_words]
        if pair:
            yield from zip(sentences, sentences[1:])
        else:
            yield from ((s,) for s in sentences)


def transfer_set(cfg: TransferConfig, general: GeneralDataConfig, pair: bool, seed: int) -> list[tuple[str, ...]]:
    """``max_examples`` examples sampled with ``seed`` from the first ``CANDIDATES_PER_EXAMPLE * max_examples``
    candidates (a corpus of any size is read only that far)."""
    wanted = cfg.max_examples * CANDIDATES_PER_EXAMPLE
    pool: list[tuple[str, ...]] = []
    for example in transfer_candidates(cfg, general, pair):
        pool.append(example)
        if len(pool) >= wanted:
            break
    if not pool:
        raise DataError("the transfer set is empty: no sentence of the transfer files has "
                        f"{cfg.min_words}..{cfg.max_words} words; check augment.transfer")
    random.Random(seed).shuffle(pool)
    return pool[: cfg.max_examples]


# --------------------------------------------------------------------------- MLM word replacement


class WordReplacer:
    """TinyBERT's word replacement with a masked-language model (single-piece words only)."""

    def __init__(self, cfg: MLMConfig, device: str = "cpu"):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            self.model = AutoModelForMaskedLM.from_pretrained(cfg.model).eval().to(device)
        except (OSError, ValueError) as exc:
            raise DataError(f"augment.mlm.model {cfg.model!r} cannot be loaded as a masked-language model "
                            f"({type(exc).__name__}); set augment.mlm.model to a local MLM directory or remove "
                            f"augment.mlm") from None
        if self.tokenizer.mask_token_id is None:
            raise DataError(f"augment.mlm.model {cfg.model!r} has no mask token: name a masked-language model")
        self.cfg, self.device, self.torch = cfg, device, torch

    def _single_piece(self, word: str) -> int | None:
        ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def augment(self, texts: list[str], rng: random.Random) -> list[str]:
        """One augmented copy of each text (the chosen single-piece words of a text masked together)."""
        torch = self.torch
        plans = []
        for text in texts:
            words = text.split()
            pieces = [self._single_piece(w) for w in words]
            chosen = [i for i, p in enumerate(pieces) if p is not None and rng.random() < self.cfg.p]
            plans.append((words, pieces, chosen))
        out = [" ".join(words) for words, _, _ in plans]
        todo = [k for k, (_, _, chosen) in enumerate(plans) if chosen]
        for start in range(0, len(todo), self.cfg.batch_size):
            group = todo[start:start + self.cfg.batch_size]
            masked = [" ".join(self.tokenizer.mask_token if i in set(plans[k][2]) else w
                               for i, w in enumerate(plans[k][0])) for k in group]
            enc = self.tokenizer(masked, padding=True, truncation=True, return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits
            top = logits.topk(self.cfg.top_k, dim=-1).indices.cpu()
            for row, k in enumerate(group):
                words, _, chosen = plans[k]
                positions = (enc["input_ids"][row] == self.tokenizer.mask_token_id).nonzero().flatten().tolist()
                new = list(words)
                for word_index, pos in zip(chosen, positions):
                    candidates = [c for c in top[row, pos].tolist() if c not in self.tokenizer.all_special_ids
                                  and not self.tokenizer.convert_ids_to_tokens(c).startswith("##")]
                    if candidates:
                        new[word_index] = self.tokenizer.convert_ids_to_tokens(rng.choice(candidates))
                out[k] = " ".join(new)
        return out


def mlm_copies(cfg: MLMConfig, examples: list[tuple[str, ...]], seed: int) -> list[tuple[str, ...]]:
    """``cfg.copies`` augmented copies of each example (every text of a pair augmented)."""
    replacer = WordReplacer(cfg)
    rng = random.Random(seed)
    out: list[tuple[str, ...]] = []
    for _ in range(cfg.copies):
        columns = [replacer.augment([e[c] for e in examples], rng) for c in range(len(examples[0]))]
        out.extend(zip(*columns))
    return out


# --------------------------------------------------------------------------- the augmented set


def fingerprint(cfg: AugmentConfig, task_train: datasets.Dataset, general: GeneralDataConfig, seed: int) -> str:
    """A cache key for callers without a recipe: the ``augment`` block, the task's training rows (datasets' own
    fingerprint of the loaded split), the general corpus (files by name and size, or the hub dataset's name) and
    the seed. A distillation run passes ``key`` to :func:`build` instead: the content-based
    :func:`compressor.run.fingerprint.augment_fingerprint` that its augmented stages' fingerprints also hold."""
    corpus = {"files": [(Path(f).name, Path(f).stat().st_size) for f in general.files if Path(f).is_file()],
              "dataset": [general.dataset, general.dataset_config, general.split, general.text_column]}
    blob = json.dumps({"augment": cfg.model_dump(), "task": task_train._fingerprint, "rows": len(task_train),
                       "general": corpus, "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build(cfg: AugmentConfig, task_train: datasets.Dataset, task: Task, general: GeneralDataConfig, seed: int,
          cache_dir: str | Path, key: str | None = None) -> datasets.Dataset:
    """The augmented rows (columns text_a, [text_b,] label, source), generated once and cached under
    ``cache_dir/augment-<key>`` (default: :func:`fingerprint`); a later call with the same key loads them."""
    folder = Path(cache_dir) / f"augment-{key or fingerprint(cfg, task_train, general, seed)}"
    if (folder / "dataset_info.json").is_file():
        log.info("augmented data: reusing %s", folder)
        return datasets.load_from_disk(str(folder))
    pair = task.is_pair
    rows: dict[str, list[tuple[str, ...]]] = {}
    if cfg.transfer is not None:
        rows["transfer"] = transfer_set(cfg.transfer, general, pair, seed)
    if cfg.mlm is not None:
        originals = [tuple(r[c] for c in TEXT_COLUMNS[: 2 if pair else 1]) for r in task_train]
        if cfg.mlm.max_examples is not None:
            originals = originals[: cfg.mlm.max_examples]
        rows["mlm"] = mlm_copies(cfg.mlm, originals, seed)
    no_label = math.nan if task.is_regression else NO_LABEL
    data: dict[str, list[Any]] = {name: [] for name in TEXT_COLUMNS[: 2 if pair else 1]}
    data.update(label=[], **{SOURCE_COLUMN: []})
    for source, examples in rows.items():
        for example in examples:
            for name, text in zip(TEXT_COLUMNS, example):
                data[name].append(text)
            data["label"].append(no_label)
            data[SOURCE_COLUMN].append(source)
    features = datasets.Features({**{n: datasets.Value("string") for n in TEXT_COLUMNS[: 2 if pair else 1]},
                                  "label": datasets.Value("float32" if task.is_regression else "int64"),
                                  SOURCE_COLUMN: datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(data, features=features)
    with atomic_dir(folder, if_exists="replace") as tmp:
        dataset.save_to_disk(str(tmp))
    log.info("augmented data: %s rows in %s", {k: len(v) for k, v in rows.items()}, folder)
    return datasets.load_from_disk(str(folder))


def sizes(dataset: datasets.Dataset) -> dict[str, int]:
    """Rows per source (``transfer``, ``mlm``): what the report records."""
    counts: dict[str, int] = {}
    for source in dataset[SOURCE_COLUMN]:
        counts[source] = counts.get(source, 0) + 1
    return counts
