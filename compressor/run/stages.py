"""The steps that make a run's student: the pruned start (``student.init: pruned``) and each distillation stage.

A stage is data (teacher, data, losses with weights, schedule; compressor/recipe/schema.py); this module turns one
into a :class:`DistillationModule` and a :class:`DistillationTrainer` run and saves its folder. Whether a step
runs at all, resumes or is reused is decided before (compressor/run/runstate.py); here it is only carried out.
Under ``torchrun`` every rank trains; only rank 0 writes the folder, and the others wait for it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding
from transformers.trainer_utils import get_last_checkpoint

from compressor.modeling.losses import LOSSES, uses_teacher
from compressor.modeling.student import PROJECTIONS_FILE, build_student, layer_map_for, projections_for, prune_student
from compressor.modeling.teacher_cache import COMPLETE as CACHE_COMPLETE
from compressor.modeling.teacher_cache import FORMAT as CACHE_FORMAT
from compressor.modeling.teacher_cache import ROW_COLUMN, CacheSpec, TeacherCache
from compressor.modeling.teacher_cache import fill as fill_cache
from compressor.modeling.trainer import DistillationModule, DistillationTrainer, teacher_forward, training_arguments
from compressor.run.context import RunContext
from compressor.run.fingerprint import fingerprint, model_identity
from compressor.run.runstate import CHECKPOINTS, PRUNE_MARKER, STAGE_MARKER, Result, Status
from ernie_common.io import atomic_dir, read_json, readable_size, write_json_atomic
from ernie_common.params import count_params

log = logging.getLogger(__name__)
TEACHER_OUTPUTS_DIR = "teacher_outputs"


# --------------------------------------------------------------------------- the pruned start


def calibration_batches(ctx: RunContext) -> list[dict[str, torch.Tensor]]:
    """``student.prune.samples`` rows of task training data (shuffled by the seed) or general-corpus blocks."""
    p = ctx.recipe.student.prune
    if p.calibration == "general":
        blocks = ctx.general(p.max_seq_length)
        rows = blocks.shuffle(seed=ctx.recipe.seed).select(range(min(p.samples, len(blocks))))
    else:
        train = ctx.tokenized(p.max_seq_length)["train"]
        rows = train.shuffle(seed=ctx.recipe.seed).select(range(min(p.samples, len(train))))
        rows = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
    collate = DataCollatorWithPadding(ctx.tokenizer)
    return [collate(rows[i:i + p.batch_size]) for i in range(0, len(rows), p.batch_size)]


def make_pruned_start(ctx: RunContext, result: Result) -> Path:
    """Cut the student out of its teacher (rank 0) into ``pruned/``: the student, its projections, its dev
    metrics before any training, ``fingerprint.json`` and ``prune.json`` (last: "finished"). Built in a temp
    folder and renamed, so a killed cut leaves nothing to resume: it starts again."""
    folder = result.folder
    if ctx.main:
        start = time.perf_counter()
        cfg = ctx.recipe.student
        teacher = ctx.teacher(cfg.prune_from)
        source = ctx.teacher_source(cfg.prune_from)
        student, projections, report = prune_student(cfg, teacher, ctx.task, calibration_batches(ctx), source)
        with atomic_dir(folder, if_exists="replace") as tmp:  # an unfinished pruned/ is replaced
            student.save_pretrained(tmp)
            ctx.tokenizer.save_pretrained(tmp)
            torch.save(projections.state_dict(), tmp / PROJECTIONS_FILE)
            dev = ctx.dev_metrics(student)
            write_json_atomic(tmp / "dev_metrics.json", dev)
            result.record(tmp)
            write_json_atomic(tmp / PRUNE_MARKER, {**report, "prune_from": cfg.prune_from, "source": str(source),
                                                   "params": count_params(student), "dev": dev,
                                                   "fingerprint": result.fingerprint,
                                                   "seconds": round(time.perf_counter() - start, 1)})
        log.info("pruned student in %s: dev %s, layers %s", folder, dev, report["layers"])
    ctx.barrier()
    return folder


# --------------------------------------------------------------------------- a distillation stage


def stage_start(ctx: RunContext, index: int, pruned: Path | None):
    """The student stage ``index`` starts from and where its projections come from: the previous stage's folder;
    for the first stage the pruned start, or a student built against the first stage's teacher (with the
    checkpoint student's own ``projections.pt`` when ``init: checkpoint``)."""
    if index > 0:
        previous = ctx.out / ctx.recipe.stages[index - 1].name
        return AutoModelForSequenceClassification.from_pretrained(previous), previous
    transformers.set_seed(ctx.recipe.seed)
    if pruned is not None:
        return AutoModelForSequenceClassification.from_pretrained(pruned), pruned
    cfg = ctx.recipe.student
    first_teacher = ctx.teacher(ctx.recipe.stages[0].teacher)
    return build_student(cfg, first_teacher, ctx.task, ctx.tokenizer), cfg.checkpoint if cfg.init == "checkpoint" else None


def run_stage(ctx: RunContext, index: int, result: Result, status: Status, pruned: Path | None) -> dict[str, Any]:
    """Train stage ``index`` from its start (``fresh``) or its last checkpoint (``resume``), save its folder and
    return its ``stage.json``. ``fingerprint.json`` is written before training, so a killed stage is checked
    against the inputs it was started with."""
    stage = ctx.recipe.stages[index]
    stage_dir = result.folder
    start = time.perf_counter()
    if ctx.main:
        result.record()
    teacher = ctx.teacher(stage.teacher)
    student, previous = stage_start(ctx, index, pruned)
    module = DistillationModule(student, projections_for(student, teacher, previous), stage.losses,
                                layer_map_for(student.config, teacher.config), stage.temperature)
    ckpt_dir = stage_dir / CHECKPOINTS
    train_rows, rows = ctx.train_data(stage)
    spec = cache_spec(ctx, index, module)
    if spec is not None:
        train_rows = train_rows.add_column(ROW_COLUMN, list(range(len(train_rows))))
    trainer = DistillationTrainer(
        model=module, teacher=teacher, train_dataset=train_rows, data_collator=ctx.collator, callbacks=list(ctx.callbacks),
        args=training_arguments(ckpt_dir, stage, ctx.recipe, logging_dir=str(stage_dir / "logs")),
    )
    if spec is not None:
        trainer.teacher_cache = teacher_cache(ctx, stage, spec, trainer, train_rows)
    last = get_last_checkpoint(str(ckpt_dir)) if status is Status.RESUME else None
    if last:
        log.info("stage %s: resuming from %s", stage.name, last)
    outcome = trainer.train(resume_from_checkpoint=last)
    summary = {"name": stage.name, "recipe": stage.model_dump(), "teacher": stage.teacher,
               "teacher_path": teacher.config._name_or_path, "data": stage.data, "losses": dict(stage.losses),
               "steps": trainer.state.global_step, "train_loss": round(float(outcome.training_loss), 6), "rows": rows,
               "train_seconds": round(float(outcome.metrics.get("train_runtime", 0.0)), 1),
               "fingerprint": result.fingerprint}
    if ctx.main:
        save_stage(ctx, stage_dir, module, summary, start)
    ctx.barrier()
    return read_json(stage_dir / STAGE_MARKER)


def cache_spec(ctx: RunContext, index: int, module: DistillationModule) -> CacheSpec | None:
    """What of the teacher's outputs stage ``index`` reads from a cache, or ``None`` (no cache): only task stages
    whose rows the teacher sees more than once, a second epoch or a later task stage with the same teacher and
    rows, and then what every such stage's losses read (TAD's latent terms, TSD's logits too)."""
    stages = ctx.recipe.stages
    stage = stages[index]
    if not ctx.recipe.teacher_cache.enabled or stage.data != "task" or not module.uses_teacher:
        return None
    same_rows = [s for s in stages if s.data == "task" and s.teacher == stage.teacher and s.augment == stage.augment
                 and s.max_seq_length == stage.max_seq_length and uses_teacher(s.losses)]
    if len(same_rows) < 2 and stage.epochs <= 1 and stage.max_steps <= 0:
        return None
    terms = {name for s in same_rows for name, weight in s.losses.items() if weight and LOSSES[name].uses_teacher}
    wanted = frozenset().union(*(LOSSES[name].needs for name in terms))
    return CacheSpec.for_losses(wanted, module.layer_map, "embedding" in terms, ctx.teacher(stage.teacher).config)


def teacher_cache(ctx: RunContext, stage, spec: CacheSpec, trainer: DistillationTrainer, rows) -> TeacherCache | None:
    """The stage's cache, filled now (each rank its shard) unless a complete one for the same teacher, rows and
    spec exists; ``None`` when it would exceed ``teacher_cache.max_gib``."""
    cfg = ctx.recipe.teacher_cache
    lengths = np.array([len(ids) for ids in rows["input_ids"]], dtype=np.int64)
    teacher = trainer.teacher
    size = spec.bytes_for(lengths, int(getattr(teacher.config, "num_labels", 0)))
    if size > cfg.max_gib * 2**30:
        log.info("stage %s: the teacher's outputs would take %s, over teacher_cache.max_gib %g: computed on "
                 "the fly", stage.name, readable_size(size), cfg.max_gib)
        return None
    digest = hashlib.sha256()
    columns = [c for c in ("input_ids", "token_type_ids") if c in rows.column_names]
    for values in zip(*(rows[c] for c in columns)):
        digest.update(b"|".join(np.asarray(v, np.int32).tobytes() for v in values) + b";")
    inputs = {"teacher": model_identity(ctx.teacher_source(stage.teacher)), "rows": digest.hexdigest(),
              "format": CACHE_FORMAT}
    key = fingerprint({**inputs, "spec": dataclasses.asdict(spec)})
    root = Path(cfg.cache_dir or ctx.out / TEACHER_OUTPUTS_DIR)
    folder = root / key
    if not (folder / CACHE_COMPLETE).is_file():
        wider = covering_cache(root, inputs, spec)
        if wider is not None:
            log.info("stage %s: teacher outputs read from %s (the same teacher and rows, kept for more losses)",
                     stage.name, wider)
            return TeacherCache(wider, spec)
        log.info("stage %s: no teacher outputs for these inputs (%s): computing them once, %s", stage.name,
                 key, readable_size(size))
    cache = fill_cache(folder, rows, spec, teacher,
                       lambda model, batch: teacher_forward(model, batch, spec.wants(), list(spec.attention_layers)),
                       ctx.collator, rank=ctx.state.process_index, world=ctx.state.num_processes, barrier=ctx.barrier,
                       autocast=trainer.accelerator.autocast)
    log.info("stage %s: teacher outputs read from %s (%s)", stage.name, folder, readable_size(size))
    return cache


def covering_cache(root: Path, inputs: dict[str, Any], spec: CacheSpec) -> Path | None:
    """A complete cache in ``root`` of the same ``inputs`` (teacher, rows) whose spec covers ``spec``: a stage
    reading the logits alone finds them in the cache a TAD on the same rows filled. Its folder name is the
    fingerprint of those inputs and its own spec, so a cache of another teacher or rows never matches."""
    for meta_file in sorted(root.glob(f"*/{CACHE_COMPLETE}")):
        try:
            kept = CacheSpec.read(json.loads(meta_file.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if kept.covers(spec) and fingerprint({**inputs, "spec": dataclasses.asdict(kept)}) == meta_file.parent.name:
            return meta_file.parent
    return None


def save_stage(ctx: RunContext, stage_dir: Path, module: DistillationModule, summary: dict[str, Any], start: float) -> None:
    """The student (an ordinary HF classifier with the tokenizer), its projections and dev metrics, then
    ``stage.json`` last (its presence means "finished"); the checkpoints go."""
    module.student.save_pretrained(stage_dir)
    ctx.tokenizer.save_pretrained(stage_dir)
    torch.save(module.projections.state_dict(), stage_dir / PROJECTIONS_FILE)
    dev = ctx.dev_metrics(module.student)
    write_json_atomic(stage_dir / "dev_metrics.json", dev)
    summary.update(dev=dev, seconds=round(time.perf_counter() - start, 1))
    write_json_atomic(stage_dir / STAGE_MARKER, summary)
    shutil.rmtree(stage_dir / CHECKPOINTS, ignore_errors=True)
