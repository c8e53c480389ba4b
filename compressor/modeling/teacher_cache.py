"""The teacher's outputs for a fixed set of rows, computed once and read by every epoch and stage after.

In a task stage the teacher sees the same rows every epoch, and TAD and TSD see the same rows again; on a
CPU the teacher's forward pass is most of a distillation step (a 12-layer teacher: ~80%). This module runs
the teacher over the rows once and keeps only what the losses read: the logits, the hidden states of the
mapped layers (0 = the embedding output) and the attention maps of the mapped layers, each row without its
padding, in fp16 ``.npy`` files that are memory-mapped for reading (``np.load(mmap_mode="r")``).

Layout of a cache folder: ``offsets.npy`` (each row's first token in the hidden-state files, and first value
in the attention files), ``logits.npy`` (rows x labels), ``hidden_<j>.npy`` (tokens x width) and
``attention_<j>.npy`` (heads x L x L per row, flat), ``progress_<rank>.json`` while filling, and
``cache.json`` written last: its presence means "complete". The folder's name is the fingerprint of what the
outputs depend on (the caller's: teacher, rows, layers, what is kept), so a changed teacher, slice, maximum
length or layer map never reads an old cache: it finds no folder and fills a new one.

Filling is resumable (each rank records how many of its rows are written, after every chunk) and shards
under ``torchrun``: rank r computes rows r, r + world, ..., every rank writes its rows into the same
pre-sized files, and after a barrier every rank reads all of them.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from compressor.modeling.losses import Outputs
from ernie_common.io import write_json_atomic

log = logging.getLogger(__name__)

COMPLETE = "cache.json"
FORMAT = 1
ROW_COLUMN = "row"
"""The column of a cached stage's training rows that names each row's place in the cache."""


@dataclass(frozen=True)
class CacheSpec:
    """What a cache keeps: the logits or not, the hidden states of these layers, the attention maps of these."""

    logits: bool
    hidden_layers: tuple[int, ...]
    """0 is the embedding output, j the output of layer j (1-based)."""
    attention_layers: tuple[int, ...]
    heads: int
    width: int

    @classmethod
    def for_losses(cls, wanted: frozenset[str], layer_map: list[int], embedding: bool, config) -> "CacheSpec":
        """What the loss terms ``wanted`` (``logits`` / ``hidden_states`` / ``attentions``) read of a teacher whose
        layers ``layer_map`` maps to (plus the embedding output when ``embedding``)."""
        hidden = sorted({*(layer_map if "hidden_states" in wanted else []), *([0] if embedding else [])})
        attention = sorted(set(layer_map)) if "attentions" in wanted else []
        return cls("logits" in wanted, tuple(hidden), tuple(attention), config.num_attention_heads, config.hidden_size)

    @classmethod
    def read(cls, meta: dict) -> "CacheSpec":
        """The spec a cache's ``cache.json`` records."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["spec"].items()})

    def describe(self) -> str:
        """What this spec keeps, in words: ``"logits"``, ``"logits, hidden states, attention maps"``."""
        kept = (("logits", self.logits), ("hidden states", self.hidden_layers), ("attention maps", self.attention_layers))
        return ", ".join(name for name, present in kept if present)

    def covers(self, other: "CacheSpec") -> bool:
        """A cache kept for this spec holds everything ``other`` reads (TSD's logits within TAD's cache)."""
        return ((self.logits or not other.logits) and set(other.hidden_layers) <= set(self.hidden_layers)
                and set(other.attention_layers) <= set(self.attention_layers)
                and (self.heads, self.width) == (other.heads, other.width))

    def wants(self) -> frozenset[str]:
        """The teacher outputs to compute for this spec (``teacher_forward``'s ``wanted``)."""
        return frozenset({*(["logits"] if self.logits else []), *(["hidden_states"] if self.hidden_layers else []),
                          *(["attentions"] if self.attention_layers else [])})

    def bytes_for(self, lengths: np.ndarray, labels: int) -> int:
        tokens, squares = int(lengths.sum()), int((lengths.astype(np.int64) ** 2).sum())
        return 2 * (len(lengths) * labels * self.logits + tokens * self.width * len(self.hidden_layers)
                    + squares * self.heads * len(self.attention_layers))


class TeacherCache:
    """A complete cache folder, memory-mapped; :meth:`outputs` gives a batch's teacher :class:`Outputs`: all the
    folder keeps, or only what ``spec`` reads (a spec the folder's covers)."""

    def __init__(self, folder: Path, spec: CacheSpec | None = None):
        self.folder = Path(folder)
        meta = json.loads((self.folder / COMPLETE).read_text())
        kept = CacheSpec.read(meta)
        if spec is not None and not kept.covers(spec):
            raise ValueError(f"the cache in {folder} does not hold {spec}")
        self.spec = spec or kept
        self.num_layers = meta["num_layers"]
        offsets = np.load(self.folder / "offsets.npy")
        self.tokens, self.squares, self.lengths = offsets[0], offsets[1], np.diff(offsets[0])
        self.logits = np.load(self.folder / "logits.npy", mmap_mode="r") if self.spec.logits else None
        self.hidden = {j: np.load(self.folder / f"hidden_{j}.npy", mmap_mode="r") for j in self.spec.hidden_layers}
        self.attention = {j: np.load(self.folder / f"attention_{j}.npy", mmap_mode="r")
                          for j in self.spec.attention_layers}

    def outputs(self, rows: Tensor, width: int, device: torch.device | str) -> Outputs:
        """The teacher's outputs for ``rows`` (cache indices) in a batch padded to ``width`` tokens: zeros at the
        padded positions (the losses mask them), ``None`` for every layer the cache does not keep."""
        index = rows.tolist()
        heads = self.spec.heads

        def hidden(j: int) -> Tensor:
            out = np.zeros((len(index), width, self.spec.width), dtype=np.float32)
            for b, i in enumerate(index):
                out[b, : self.lengths[i]] = self.hidden[j][self.tokens[i]: self.tokens[i + 1]]
            return torch.from_numpy(out).to(device)

        def attention(j: int) -> Tensor:
            out = np.zeros((len(index), heads, width, width), dtype=np.float32)
            for b, i in enumerate(index):
                n = int(self.lengths[i])
                out[b, :, :n, :n] = self.attention[j][self.squares[i]: self.squares[i + 1]].reshape(heads, n, n)
            return torch.from_numpy(out).to(device)

        logits = torch.from_numpy(np.asarray(self.logits[index], dtype=np.float32)).to(device) \
            if self.logits is not None else None
        hidden_states = tuple(hidden(j) if j in self.hidden else None for j in range(self.num_layers + 1)) \
            if self.hidden else None
        attentions = tuple(attention(j) if j in self.attention else None for j in range(1, self.num_layers + 1)) \
            if self.attention else None
        return Outputs(logits, hidden_states, attentions)


def _batches(order: list[int], lengths: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Rows in ``order`` cut into batches of at most ``max_tokens`` padded tokens (rows are sorted by length)."""
    batches, current, longest = [], [], 0
    for i in order:
        longest_with = max(longest, int(lengths[i]))
        if current and longest_with * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_with = [], int(lengths[i])
        current.append(i)
        longest = longest_with
    return batches + ([current] if current else [])


def fill(folder: Path, rows, spec: CacheSpec, teacher: nn.Module,
         forward: Callable[[nn.Module, dict[str, Tensor]], Outputs], collate: Callable[[list[dict]], dict[str, Tensor]],
         rank: int = 0, world: int = 1, barrier: Callable[[], None] = lambda: None,
         autocast: Callable[[], ContextManager] = nullcontext, max_tokens: int = 8192, chunk_batches: int = 20) -> TeacherCache:
    """Run ``teacher`` over ``rows`` (tokenised: ``input_ids``...) and keep ``spec``'s outputs in ``folder``;
    resume a fill a killed run left, or open a complete cache as it is. ``forward(teacher, batch)`` returns
    the teacher's :class:`Outputs` for a collated batch; every rank calls this, each computing its shard."""
    folder = Path(folder)
    if (folder / COMPLETE).is_file():
        return TeacherCache(folder)
    lengths = np.array([len(ids) for ids in rows["input_ids"]], dtype=np.int64)
    num_labels = int(getattr(teacher.config, "num_labels", 0)) if spec.logits else 0
    if rank == 0 and not (folder / "offsets.npy").is_file():
        _create(folder, spec, lengths, num_labels)
    barrier()
    offsets = np.load(folder / "offsets.npy")
    tokens, squares = offsets[0], offsets[1]
    files = {"logits": np.load(folder / "logits.npy", mmap_mode="r+") if spec.logits else None,
             **{f"hidden_{j}": np.load(folder / f"hidden_{j}.npy", mmap_mode="r+") for j in spec.hidden_layers},
             **{f"attention_{j}": np.load(folder / f"attention_{j}.npy", mmap_mode="r+") for j in spec.attention_layers}}
    mine = sorted(range(rank, len(lengths), world), key=lambda i: (lengths[i], i))
    progress = folder / f"progress_{rank}.json"
    done = json.loads(progress.read_text())["batches"] if progress.is_file() else 0
    batches = _batches(mine, lengths, max_tokens)
    start = time.perf_counter()
    if done < len(batches):
        log.info("teacher outputs: rank %d computes %d rows in %d batches (%d done before) into %s", rank, len(mine),
                 len(batches), done, folder)
    for b in tqdm(range(done, len(batches)), initial=done, total=len(batches), desc="teacher outputs", unit="batch",
                  disable=rank != 0 or done == len(batches)):
        index = batches[b]
        batch = collate([{k: rows[i][k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows[i]}
                         for i in index])
        batch = {k: v.to(next(teacher.parameters()).device) for k, v in batch.items()}
        with torch.no_grad(), autocast():
            out = forward(teacher, batch)
        for r, i in enumerate(index):
            n = int(lengths[i])
            if spec.logits:
                files["logits"][i] = out.logits[r].float().cpu().numpy()
            for j in spec.hidden_layers:
                files[f"hidden_{j}"][tokens[i]: tokens[i + 1]] = out.hidden_states[j][r, :n].float().cpu().numpy()
            for j in spec.attention_layers:
                files[f"attention_{j}"][squares[i]: squares[i + 1]] = \
                    out.attentions[j - 1][r, :, :n, :n].float().cpu().numpy().reshape(-1)
        if (b + 1) % chunk_batches == 0 or b + 1 == len(batches):
            for array in files.values():
                if array is not None:
                    array.flush()
            write_json_atomic(progress, {"batches": b + 1, "of": len(batches)})
    fill_seconds = round(time.perf_counter() - start, 1) if done < len(batches) else None
    if fill_seconds is not None:
        log.info("teacher outputs: rank %d done in %.1f s", rank, fill_seconds)
    del files
    barrier()
    if rank == 0 and not (folder / COMPLETE).is_file():
        write_json_atomic(folder / COMPLETE, {"format": FORMAT, "spec": asdict(spec), "rows": len(lengths),
                                              "num_layers": teacher.config.num_hidden_layers,
                                              "bytes": spec.bytes_for(lengths, num_labels),
                                              "fill_seconds": fill_seconds})
    barrier()
    return TeacherCache(folder)


def _create(folder: Path, spec: CacheSpec, lengths: np.ndarray, num_labels: int) -> None:
    """Pre-sized fp16 files (holes on disk until written) and the row offsets, in a temp folder renamed into
    place, so a half-created folder is never taken for a started fill."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tokens = np.concatenate([[0], np.cumsum(lengths)])
        squares = np.concatenate([[0], np.cumsum(lengths ** 2 * spec.heads)])
        np.save(work / "offsets.npy", np.stack([tokens, squares]))
        if spec.logits:
            np.lib.format.open_memmap(work / "logits.npy", "w+", np.float16, (len(lengths), num_labels))
        for j in spec.hidden_layers:
            np.lib.format.open_memmap(work / f"hidden_{j}.npy", "w+", np.float16, (int(tokens[-1]), spec.width))
        for j in spec.attention_layers:
            np.lib.format.open_memmap(work / f"attention_{j}.npy", "w+", np.float16, (int(squares[-1]),))
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)

