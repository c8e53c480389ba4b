"""The general corpus: local text files or a hub dataset, tokenised and packed into fixed-length blocks once,
cached on disk and memory-mapped. ``python -m compressor.data`` packs a recipe's corpus ahead of a ``torchrun`` job.
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

from compressor.data import DataError, from_hub
from compressor.recipe.schema import GeneralDataConfig
from ernie_common.env import usable_cpus
from ernie_common.io import atomic_dir

log = logging.getLogger(__name__)

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


def _source(cfg: GeneralDataConfig, streaming: bool):
    """The raw text as a ``datasets`` (Iterable)Dataset with a ``text`` column of one paragraph per row."""
    if cfg.files:
        for f in cfg.files:
            if not Path(f).is_file():
                raise DataError(f"general corpus file {f} does not exist; fix general.files in the recipe")
        return datasets.load_dataset("text", data_files=[str(f) for f in cfg.files], split="train", streaming=streaming)
    what = f"{cfg.dataset}" + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    ds = from_hub(what, lambda: datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split, streaming=streaming))
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
